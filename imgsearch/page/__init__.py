"""The Streamlit page, one module per view (app.py is main() and the routing between them).

Everything computed comes from the imgsearch package; these modules hold widgets and pictures. The
package is imported inside the functions that need it, never at a module's top: it imports torch,
which takes seconds on a cold server, and the page draws its upload widget first.
"""
