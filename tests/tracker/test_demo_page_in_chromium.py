"""The demo page of `pixelpipe up --demo` in Chromium: its counts of accepted and rejected events
fill in and grow, the page's own clicks among them."""


def test_the_demo_page_shows_accepted_and_rejected_counts(browser, demo_stack):
    page = browser().new_page()
    page.goto(f"{demo_stack.collector}/demo")
    page.get_by_role("button", name="Buy").click()
    # The demo's malformed pair comes every 10 s; the page refreshes its counts every 2 s.
    page.wait_for_function(
        "Number(document.getElementById('accepted').textContent) > 0"
        " && Number(document.getElementById('rejected').textContent) >= 2"
        " && document.getElementById('accepted-by-site').textContent.includes('demo-shop')",
        timeout=60_000)
    assert "malformed_json" in page.text_content("#rejected-by-reason")
    assert "two malformed requests on purpose" in page.text_content("#what-the-demo-sends")
