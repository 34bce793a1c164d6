"""The report: `momil report` renders a `momil benchmark` folder as one offline HTML page."""

from momil.report.html import (
    PALETTE,
    STYLE,
    attention_svg,
    auc_bars_svg,
    field_composite,
    field_file_name,
    field_overlay_svg,
    markdown_table_to_html,
    png_bytes,
    render_report,
    roc_points,
    roc_svg,
)
