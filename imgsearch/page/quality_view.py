"""The Quality view: the evaluation report's figures and curves, and where two spaces disagree on a class."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from .common import collection_name, load_index, public

if TYPE_CHECKING:
    from imgsearch.search import Index


@st.cache_data(show_spinner="Searching this class's images in every space…", max_entries=32)
def class_disagreements(build_dir: str, label: str, first: str, second: str):
    from imgsearch.quality import disagreements

    return disagreements(load_index(build_dir), label, first=first, second=second)


# The matplotlib plot's styles (imgsearch/evaluate.py), so the page and docs/precision_at_k.png read alike:
# codes solid, bits dashed, baselines dotted. "As served" lies on "exact" (they differ by 0.001): exact is
# drawn wide and light, as served dark, thin and dashed on top of it, so both stay visible.
CURVE_STYLES = {"pixels": ("#7f7f7f", [2, 3]), "pca": ("#8c564b", [2, 3]), "codes_exact": ("#9ecae1", [1, 0]),
                "codes_served": ("#08306b", [5, 3]), "bits_64": ("#bcbd22", [6, 3]), "bits_128": ("#ff7f0e", [6, 3]),
                "bits_256": ("#d62728", [6, 3]), "bits_256_sign": ("#e377c2", [6, 3, 1, 3])}


def precision_chart(report: dict, shown: dict):
    """Precision at k, one labelled line per representation, each its own colour and dash."""
    import altair as alt
    import pandas as pd

    keys = [key for key in shown if key in report["precision_curves"]]
    rows = pd.concat([pd.DataFrame({"k": np.arange(1, len(report["precision_curves"][key]) + 1),
                                    "precision": report["precision_curves"][key], "representation": shown[key]})
                      for key in keys])
    names = [shown[key] for key in keys]
    styles = [CURVE_STYLES.get(key, ("#333333", [1, 0])) for key in keys]
    # One column: a label cut at a phone's width would be unreadable. The chart's height includes the legend.
    legend = alt.Legend(title=None, orient="bottom", columns=1, symbolStrokeWidth=3, symbolSize=250, labelLimit=0)
    lines = alt.Chart(rows).mark_line(strokeWidth=2).encode(
        alt.X("k:Q", scale=alt.Scale(type="log"), title="k"),
        alt.Y("precision:Q", scale=alt.Scale(zero=False), title="precision at k"),
        alt.Color("representation:N", scale=alt.Scale(domain=names, range=[s[0] for s in styles]), legend=legend),
        alt.StrokeDash("representation:N", scale=alt.Scale(domain=names, range=[s[1] for s in styles]), legend=legend),
        tooltip=["representation:N", "k:Q", alt.Tooltip("precision:Q", format=".3f")],
    )

    def only(key):
        return alt.FieldEqualPredicate(field="representation", equal=shown.get(key, ""))

    # "As served" lies on "exact": exact is drawn wide beneath everything, as served again on top.
    wide = lines.transform_filter(only("codes_exact")).mark_line(strokeWidth=7)
    return alt.layer(wide, lines, lines.transform_filter(only("codes_served"))).properties(height=560)


def per_class_chart(report: dict, shown: dict):
    """P@10 of each class's queries, one bar per representation, in the precision chart's colours;
    None for a report without per-class figures (one made before evaluate recorded them)."""
    import altair as alt
    import pandas as pd

    from imgsearch.evaluate import PER_CLASS_SHOWN

    per_class = report.get("per_class_P@10", {})
    keys = [key for key in PER_CLASS_SHOWN if key in per_class and key in shown]
    if not keys:
        return None
    rows = pd.DataFrame([{"class": c, "representation": shown[key], "P@10": p}
                         for key in keys for c, p in per_class[key].items()])
    names = [shown[key] for key in keys]
    return alt.Chart(rows).mark_bar().encode(
        alt.Y("class:N", title=None, sort=list(per_class[keys[0]])),
        alt.YOffset("representation:N", sort=names),
        alt.X("P@10:Q", scale=alt.Scale(domain=[0, 1]), title="P@10 of the class's queries"),
        alt.Color("representation:N", scale=alt.Scale(domain=names, range=[CURVE_STYLES[k][0] for k in keys]),
                  legend=alt.Legend(title=None, orient="bottom", columns=1, labelLimit=0)),
        tooltip=["class:N", "representation:N", alt.Tooltip("P@10:Q", format=".3f")],
    ).properties(height=alt.Step(7))


def quality_view(index: Index) -> None:
    """The evaluation report's figures, then where two spaces disagree on a class of this index."""
    report_ui()
    if index.classes:
        disagreements_ui(index)


def report_ui() -> None:
    """The evaluation report (docs/evaluation.json or IMGSEARCH_EVALUATION): the table, the curves, per class."""
    import pandas as pd

    from imgsearch.evaluate import REPRESENTATIONS
    from imgsearch.quality import ReportError, load_evaluation

    try:
        report = load_evaluation()
    except ReportError as e:
        st.warning(public(str(e)))
        return
    if report is None:
        st.info("No evaluation report yet: run scripts/evaluate.py --json docs/evaluation.json.")
        return
    s = report["settings"]
    st.markdown(f"Retrieval on **{s['query_items']:,}** queries from `{collection_name(s['queries'])}` against "
                f"**{s['database_items']:,}** images of `{collection_name(s['database'])}` (model `{s.get('model', '?')}`); "
                "a result is relevant when it has the query's class.")
    shown = {key: name for key, name in REPRESENTATIONS.items() if key in report}
    table = pd.DataFrame({name: report[key] for key, name in shown.items()}).T
    if "bytes_per_item" in report:
        table["bytes per image"] = [report["bytes_per_item"].get(key) for key in shown]
    st.dataframe(table.style.format("{:.3f}", subset=[c for c in table.columns if c != "bytes per image"]),
                 key="quality_table")
    st.caption(f"Reconstruction MSE on the queries: {report['reconstruction_mse']:.4f} (pixels in [0, 1]).")
    st.altair_chart(precision_chart(report, shown), width="stretch")
    curves = report["precision_curves"]
    if "codes_exact" in curves and "codes_served" in curves:
        gap = float(np.max(np.abs(np.subtract(curves["codes_exact"], curves["codes_served"]))))
        st.caption(f"“{shown['codes_served']}” (dark, dashed) lies on “{shown['codes_exact']}” (wide, light blue): "
                   f"they differ by at most {gap:.3f} at any k.")
    per_class = per_class_chart(report, shown)
    if per_class is not None:
        st.markdown("**Precision at 10, class by class**: where each representation finds the class")
        st.altair_chart(per_class, width="stretch")


def disagreements_ui(index: Index) -> None:
    """For a class, how often each space's nearest neighbour shares it, and the images two spaces disagree on."""
    from imgsearch.explore import groups_html, item_url

    st.subheader("Where two searches disagree")
    names = list(index.spaces)
    a, b, c = st.columns(3)
    label = a.selectbox("Class", index.classes, key="quality_class")
    first = b.selectbox("Space", names, index=names.index("code") if "code" in names else 0, key="quality_first",
                        format_func=lambda s: index.spaces[s].title)
    others = [n for n in names if n != first]
    second = c.selectbox("compared with", others, index=others.index("pixel") if "pixel" in others else 0,
                         key="quality_second", format_func=lambda s: index.spaces[s].title)
    result = class_disagreements(str(index.path), label, first, second)
    st.markdown(f"Of {result.queries} sampled **{label}** images, the nearest neighbour has the same class in "
                + ", ".join(f"{index.spaces[n].title.lower()} for **{r}**" for n, r in result.right.items()) + ".")
    t1, t2 = index.spaces[first].title, index.spaces[second].title
    for title, triples in ((f"{t1} right, {t2.lower()} wrong", result.first_wins),
                           (f"{t2} right, {t1.lower()} wrong", result.second_wins),
                           ("Both wrong", result.both_wrong)):
        st.markdown(f"**{title}** ({len(triples)})")
        if not triples:
            st.caption("none among the sampled images")
            continue
        st.html(groups_html([[(item_url(index, q), "query", 64), (item_url(index, x), f"{first}: {index.label(x)}", 64),
                               (item_url(index, y), f"{second}: {index.label(y)}", 64)] for q, x, y in triples[:6]]))
