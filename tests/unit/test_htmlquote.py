"""Where a reply's HTML starts quoting, per mail client."""

from __future__ import annotations

import pytest

from services.api.htmlquote import split_html

NEW = "<div dir=\"ltr\">Paid today, thanks.</div>"


@pytest.mark.parametrize(("client", "quote"), [
    ("gmail", '<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Dec 1, 2026 at 10:15 AM '
              'Maria &lt;support@example.com&gt; wrote:<br></div><blockquote class="gmail_quote">Please pay.'
              '</blockquote></div>'),
    ("outlook", '<div id="appendonsend"></div><hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg">'
                '<b>From:</b> Maria<br><b>Sent:</b> Tuesday<br><b>To:</b> Ann<br><b>Subject:</b> RE: Invoice</div>'
                '<div>Please pay.</div>'),
    ("thunderbird", '<div class="moz-cite-prefix">On 01.12.2026 10:15, Maria wrote:<br></div>'
                    '<blockquote type="cite" cite="mid:x@example.com">Please pay.</blockquote>'),
    ("apple", '<div><br><blockquote type="cite"><div>On 1 Dec 2026, at 10:15, Maria &lt;support@example.com&gt; '
              'wrote:</div><div>Please pay.</div></blockquote></div>'),
    ("yandex", '<div>01.12.2026, 10:15, "Maria" &lt;support@example.com&gt;:</div><blockquote>Please pay.</blockquote>'),
    ("mailru", '<div>Вторник, 1 декабря 2026, 10:15 +03:00 от Maria &lt;support@example.com&gt;:<br>'
               '<blockquote style="border-left:1px solid #0857A6">Please pay.</blockquote></div>'),
])
def test_the_quote_is_split_off(client: str, quote: str) -> None:
    new, quoted = split_html(f"<html><body>{NEW}{quote}</body></html>")
    assert "Paid today" in new and "Please pay" not in new, client
    assert quoted is not None and "Please pay" in quoted and "Paid today" not in quoted


def test_an_attribution_after_a_line_break_goes_alone() -> None:
    html = "<div>Paid today.<br><br>01.12.2026, 10:15, Maria &lt;m@example.com&gt;:<br><blockquote>Pay.</blockquote></div>"
    new, quoted = split_html(html)
    assert "Paid today." in new and "01.12.2026" not in new
    assert quoted is not None and "01.12.2026" in quoted and "Pay." in quoted


@pytest.mark.parametrize("html", [
    "<div>See what the manual says:</div><blockquote>Restart the spooler.</blockquote><div>It did not help.</div>",
    '<div class="gmail_quote">On Tue, Dec 1, 2026 Maria wrote:<blockquote>Pay.</blockquote></div>',  # nothing new
    "<p>No quote at all.</p>",
    "<![if !supportLists]><p>Word's markup</p><![endif]>",
])
def test_kept_whole(html: str) -> None:
    assert split_html(html) == (html, None)
