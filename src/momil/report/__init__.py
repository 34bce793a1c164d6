"""The report: `momil report` renders a `momil benchmark` folder as one offline HTML page."""

from momil.report.figures import PALETTE, save_figure, save_image
from momil.report.html import STYLE, field_composite, field_file_name, render_report, table_html
