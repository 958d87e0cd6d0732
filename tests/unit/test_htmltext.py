from __future__ import annotations

import pytest

from services.router.htmltext import html_to_text


def test_drops_head_script_style_and_comments() -> None:
    html = (
        "<html><head><title>Newsletter</title><meta charset=utf-8>"
        "<style>p { color: red }</style></head>"
        "<body><!-- tracking --><script>if (a < b) { alert('x') }</script>"
        "<p>Hello</p></body></html>"
    )
    assert html_to_text(html) == "Hello"


def test_paragraphs_become_blank_line_separated() -> None:
    assert html_to_text("<p>One</p><p>Two</p><h1>Three</h1>Four") == "One\n\nTwo\n\nThree\n\nFour"


def test_divs_and_br_become_line_breaks() -> None:
    html = '<div dir="ltr">Line one<br>Line two</div><div><br></div><div>After a blank</div>'
    assert html_to_text(html) == "Line one\nLine two\n\nAfter a blank"


def test_runs_of_blank_lines_collapse_to_one() -> None:
    assert html_to_text("a<br><br><br><br><br>b") == "a\n\nb"


def test_whitespace_is_collapsed_and_trailing_spaces_stripped() -> None:
    assert html_to_text("<p>  lots   of\n\n  space  </p>\n\n<p>next&nbsp;&nbsp;</p>") == "lots of space\n\nnext"


def test_list_items_get_markers_and_nested_lists_indent() -> None:
    html = "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul><ol><li>first</li><li>second</li></ol>"
    assert html_to_text(html) == "- one\n- two\n  - nested\n\n1. first\n2. second"


def test_link_keeps_text_and_adds_a_differing_href() -> None:
    html = '<p>Read <a href="https://help.example.com/kb/42">the article</a>.</p>'
    assert html_to_text(html) == "Read the article (https://help.example.com/kb/42)."


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        ('<a href="https://example.com/">https://example.com</a>', "https://example.com"),
        ('<a href="http://www.example.com/">www.example.com</a>', "www.example.com"),
        ('<a href="mailto:help@example.com">help@example.com</a>', "help@example.com"),
        ('<a href="#top">Back to top</a>', "Back to top"),
    ],
)
def test_link_whose_text_is_its_target_is_not_repeated(anchor: str, expected: str) -> None:
    assert html_to_text(anchor) == expected


def test_link_without_text_is_dropped() -> None:
    assert html_to_text('x <a href="https://t.example.com/open"><img src="p.gif"></a> y') == "x y"


def test_entities_are_decoded() -> None:
    assert html_to_text("&lt;b&gt; &amp; &copy; &#1055;&#x440;&eacute;") == "<b> & © Прé"


def test_blockquote_lines_are_quoted() -> None:
    html = "<p>My answer</p><blockquote><p>Your question</p><blockquote>older</blockquote></blockquote>"
    assert html_to_text(html) == "My answer\n\n> Your question\n\n> > older"


def test_pre_keeps_its_layout() -> None:
    assert html_to_text("<p>Log:</p><pre>  at main()\n    at run()</pre>") == "Log:\n\n  at main()\n    at run()"


def test_table_cells_are_separated_and_rows_are_lines() -> None:
    html = "<table><tr><td>Name</td><td>Ivan</td></tr><tr><th>Room</th><td>204</td></tr></table>"
    assert html_to_text(html) == "Name | Ivan\nRoom | 204"
    # a cell with nothing to read before it adds no separator (layout tables, image cells)
    assert html_to_text("<table><tr><td><img src=x></td><td>Only</td><td></td></tr></table>") == "Only"
    # a table in a cell: its rows are lines
    nested = "<table><tr><td><table><tr><td>a</td><td>b</td></tr></table></td></tr></table>"
    assert html_to_text(nested) == "a | b"


def test_outlook_paragraphs_are_lines_and_empty_ones_blank_lines() -> None:
    html = (
        '<div class="WordSection1"><p class="MsoNormal">Hi team,<o:p></o:p></p>\r\n'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>\r\n'
        '<p class="MsoNormal">The printer is broken.<o:p></o:p></p>\r\n'
        '<p class="MsoNormal">Thanks<o:p></o:p></p></div>'
    )
    assert html_to_text(html) == "Hi team,\n\nThe printer is broken.\nThanks"


def test_preheader_padding_characters_are_removed() -> None:
    assert html_to_text("Sale\u200c&nbsp;\u200c&#847;\u00ad ends today") == "Sale ends today"


def test_unclosed_head_does_not_swallow_the_body() -> None:
    assert html_to_text("<html><head><title>Subject<body><p>Body text</p>") == "Body text"


def test_word_conditional_sections_are_ignored() -> None:
    html = "<p><![if !supportLists]>1.<![endif]>Item</p><![foo[ junk"
    assert html_to_text(html) == "1.Item"


def test_parser_failure_falls_back_to_stripping_tags() -> None:
    # The removal of one marked section joins a new one, which html.parser rejects.
    assert html_to_text("<p>keep &amp; this</p><<![x>![foo[ tail") == "keep & this <![foo[ tail"


@pytest.mark.parametrize(
    "broken",
    [
        "", "<", "</", "<a href='x", "<!--", "<!DOCTYPE", "<p><b><i>unclosed",
        "&#99999999999;", "<![CDATA[x", "</p></div>",
    ],
)
def test_broken_html_never_raises(broken: str) -> None:
    assert isinstance(html_to_text(broken), str)


def test_plain_text_passes_through() -> None:
    assert html_to_text("just text, no tags") == "just text, no tags"
