"""Language models: targets for sequences (``lrpfx.language.targets``) and token heatmaps
(``lrpfx.language.text``); the ``lrpfx explain-text`` command is ``lrpfx.language.command``."""

from lrpfx.language.targets import NextToken, last_positions
from lrpfx.language.text import (
    TokenHeatmap,
    html_page,
    rich_text,
    token_heatmaps,
    token_strings,
    write_html,
)

__all__ = ["NextToken", "TokenHeatmap", "html_page", "last_positions", "rich_text",
           "token_heatmaps", "token_strings", "write_html"]
