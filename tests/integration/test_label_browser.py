"""The labelling page end to end: ``rlhf-lightning label DB`` as a real server process, driven by headless
Chromium (keyboard only, drag and drop, ties, hostile model text, a reload mid-item, the server killed right
after acknowledging a ranking), and two annotators posting at the same moment. Then what protects the
annotator: every turn of a conversation shown, cut-off answers marked, Enter on an untouched item not saving,
a skip undone, a 20,000-character answer with Submit still in reach, and direction control characters shown
rather than applied.

Needs Playwright for Python and the system's Chromium (``apt-get install chromium``); skipped without them
unless ``RLHF_REQUIRE_BROWSER=1``.
``RLHF_SCREENSHOTS=1`` also rewrites ``docs/images/label-page.png`` and ``docs/images/label-done.png``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rlhf_lightning.data.labels import LabelStore, export_rows

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RLHF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
"""The system's Chromium (``RLHF_CHROMIUM`` names another binary, e.g. Chrome on macOS)."""
XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'
HAIKU = "Write a haiku about rain."
FRUITS = "Name three fruits."
HARMLESS = "Say something harmless."
COUNT = "Count to three."
PROMPTS = [
    (HAIKU, None, HAIKU, [
        "Soft rain on the roof\nthe gutters hum a low song\nsleep comes like a tide",
        "Rain falls.\nIt is wet.\nThe end.",
        "Grey sky, patient drops\neach puddle a small mirror\nholding the whole street",
        "Raindrops on windows\ncity lights blur into gold\nthe bus is late again",
    ]),
    (FRUITS, None, FRUITS, ["Apple, pear, plum.", "Carrot, potato, leek.", "Banana, mango, kiwi."]),
    (HARMLESS, None, HARMLESS, ["Have a nice day!", XSS, "Water is wet."]),
    (COUNT, None, COUNT, ["1, 2, 3", "one two three", "3, 2, 1"]),
]  # fmt: skip


# --- the server --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``rlhf-lightning label DATABASE --port PORT`` in a subprocess."""

    def __init__(self, database: Path, log: Path, token: str | None = None) -> None:
        self.database, self.log, self.port, self.token = database, log, free_port(), token
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "rlhf_lightning.cli", "label", str(self.database), "--port", str(self.port)]
        command += ["--token", self.token] if self.token else []
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited ({self.process.returncode}):\n{self.log.read_text()}")
            try:
                headers = {"X-Token": self.token} if self.token else {}
                answer = httpx.get(self.url + "api/progress", params={"annotator": "probe"}, headers=headers, timeout=2)
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not answer within 60 s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flushing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(prompts, annotators_per_item: int = 1, token: str | None = None) -> Server:
        database = tmp_path / f"labels{len(servers)}.sqlite"
        store = LabelStore(database, create=True)
        store.add_candidates(run="r", round=1, policy="sft", settings={}, prompts=prompts)
        store.annotators_per_item = annotators_per_item
        server = Server(database, tmp_path / f"server{len(servers)}.log", token)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# --- the browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright for Python is not installed (pip install playwright)"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"no Chromium at {CHROMIUM}"
    if reason is not None:
        if os.environ.get("RLHF_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RLHF_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield browser
        browser.close()


def shown(page) -> list[tuple[str, bool]]:
    """The candidates as the page lists them, best first: (text, tied with the one above)."""
    return [tuple(x) for x in page.evaluate(
        "[...document.querySelectorAll('#candidates > li')]"
        ".map(li => [li.querySelector('.text').textContent, li.classList.contains('tied')])"
    )]  # fmt: skip


def texts(page) -> list[str]:
    return [text for text, _ in shown(page)]


def focused(page) -> int:
    return page.evaluate("[...document.querySelectorAll('#candidates > li')].indexOf(document.activeElement)")


def ranks(order: list[tuple[str, bool]]) -> dict[str, int]:
    """``{text: rank}`` (1 = best, ties share a rank) of a shown order."""
    result, rank = {}, 0
    for text, tied in order:
        rank += 0 if tied and rank else 1
        result[text] = rank
    return result


def rank_by_keyboard(page, target: list[str]) -> None:
    """Reorder with the arrow keys only: focus a candidate (↑/↓), move it up (Alt+↑)."""
    for i, text in enumerate(target):
        j, at = texts(page).index(text), focused(page)
        for _ in range(abs(j - at)):
            page.keyboard.press("ArrowDown" if j > at else "ArrowUp")
        for _ in range(j - i):
            page.keyboard.press("Alt+ArrowUp")
        assert texts(page)[i] == text and focused(page) == i  # the focus follows the moved candidate


def rank_by_dragging(page, target: list[str]) -> None:
    for i, text in enumerate(target):
        j = texts(page).index(text)
        if j != i:
            rows = page.locator("#candidates > li")
            rows.nth(j).drag_to(rows.nth(i), source_position={"x": 12, "y": 12}, target_position={"x": 12, "y": 4})
    assert texts(page) == target


def test_label_page_end_to_end(browser, make_server):
    from playwright.sync_api import expect

    server = make_server(PROMPTS, token="s3cret-token")  # the page keeps it (cookie for its files, X-Token header)
    screenshots = os.environ.get("RLHF_SCREENSHOTS") == "1"
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.on("console", lambda m: "Content Security Policy" in m.text and page_errors.append(m.text))
    expected: dict[str, dict[str, int]] = {}

    # The name, asked once, typed and entered from the keyboard.
    page.goto(server.url + "?token=s3cret-token")
    expect(page.locator("#name-input")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Enter")
    prompt = page.locator("#prompt")
    expect(prompt).to_have_text(HAIKU)
    expect(page.locator("#progress")).to_have_text("You: 0 done · items complete 0 / 4 (each asked of 1 annotator)")
    assert "\n" in texts(page)[0]  # newlines kept (and shown: white-space pre-wrap)

    # 1. Keyboard only: order, then tie the third with the second (t), submit with Enter.
    haikus = PROMPTS[0][3]
    rank_by_keyboard(page, [haikus[2], haikus[0], haikus[3], haikus[1]])
    page.keyboard.press("ArrowUp")
    page.keyboard.press("t")
    order = shown(page)
    assert order == [(haikus[2], False), (haikus[0], False), (haikus[3], True), (haikus[1], False)]
    rows = page.locator("#candidates > li")
    expect(rows.nth(2)).to_have_attribute(
        "aria-label", "Rank 2, tied: response " + rows.nth(2).get_attribute("data-key")
    )
    expect(rows.nth(2).locator(".rank")).to_have_text("=2")
    expect(rows.nth(2).locator(".tie-mark")).to_be_visible()
    page.keyboard.press("Enter")
    expect(prompt).to_have_text(FRUITS)
    expect(page.locator("#message")).to_contain_text("Saved")
    expected[HAIKU] = ranks(order)

    # 2. New candidates arrive while the page shows the item: its submission is refused as stale and the page
    # shows the item again, with every candidate. Then drag and drop.
    fruits = PROMPTS[1][3]
    rank_by_dragging(page, [fruits[2], fruits[0], fruits[1]])
    fig = "Fig, date, lime."
    store = LabelStore(server.database)
    store.add_candidates(run="r2", round=1, policy="rl", settings={}, prompts=[(FRUITS, None, FRUITS, [fig])])
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_contain_text("changed while you ranked it")
    expect(page.locator("#candidates > li")).to_have_count(4)
    assert store.counts()["judgements"] == 1 and page.locator("#prompt").text_content() == FRUITS
    rank_by_dragging(page, [fruits[2], fig, fruits[0], fruits[1]])
    expected[FRUITS] = ranks(shown(page))
    page.locator("#submit").click()
    expect(prompt).to_have_text(HARMLESS)

    # 3. Hostile model text is shown as text and runs nothing.
    assert XSS in texts(page)
    assert page.locator("#candidates img, #candidates script").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"

    # A reload mid-item shows the same item with the order (and comment) made so far.
    page.keyboard.press("Alt+ArrowDown")
    page.keyboard.press("c")
    page.keyboard.type("half done")
    page.keyboard.press("Escape")
    partial, item_info = shown(page), page.locator("#item-info").text_content()
    page.reload()
    expect(prompt).to_have_text(HARMLESS)
    assert page.locator("#item-info").text_content() == item_info
    assert shown(page) == partial
    expect(page.locator("#comment")).to_have_value("half done")
    assert page.evaluate("typeof window.pwned") == "undefined"

    # The server is killed (SIGKILL) as soon as it acknowledged the ranking, then started again.
    expected[HARMLESS] = ranks(partial)
    with page.expect_response(lambda r: "/api/submit" in r.url) as answer:
        page.locator("#submit").click()
    assert answer.value.status == 200
    server.kill()
    expect(page.locator("#message")).to_contain_text("Saved your ranking")
    server.start()
    page.reload()
    expect(prompt).to_have_text(COUNT)
    expect(page.locator("#progress")).to_contain_text("You: 3 done · items complete 3 / 4")

    # 4. The visible controls: a button, the checkbox, the comment box, the Submit button.
    page.locator("#candidates > li").nth(2).get_by_role("button", name="up").click()
    page.locator("#none-acceptable").check()
    page.locator("#comment").fill("all wrong")
    expected[COUNT] = ranks(shown(page))
    page.locator("#submit").click()
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#done")).to_contain_text("Nothing left for you to rank")
    expect(page.locator("#done")).to_contain_text("Export the rankings with rlhf-lightning label export")
    expect(page.locator("#progress")).to_have_text("You: 4 done · items complete 4 / 4 (each asked of 1 annotator)")
    expect(page.locator("#team")).to_have_text("Done per annotator: alice 4")
    if screenshots:
        page.screenshot(path=str(ROOT / "docs" / "images" / "label-done.png"))
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page_errors == []
    context.close()

    rows, _ = export_rows(LabelStore(server.database))
    assert {row["prompt"]: dict(zip(row["responses"], row["ranking"])) for row in rows} == expected
    assert len(rows) == 4 and {row["annotator"] for row in rows} == {"alice"}
    by_prompt = {row["prompt"]: row for row in rows}
    assert by_prompt[COUNT]["none_acceptable"] and by_prompt[COUNT]["comment"] == "all wrong"
    assert by_prompt[HARMLESS]["comment"] == "half done"


def test_two_annotators_at_once(make_server):
    """``annotators_per_item=2``: two people ranking the same items at the same moment are both saved, and
    nobody else is given an item two people already hold or ranked."""
    prompts = [(f"Prompt {i}", None, f"Prompt {i}", [f"a{i}", f"b{i}", f"c{i}"]) for i in range(3)]
    server = make_server(prompts, annotators_per_item=2)
    clients = {name: httpx.Client(base_url=server.url, timeout=30) for name in ("alice", "bob", "carol")}

    def next_item(name: str) -> dict:
        response = clients[name].get("/api/next", params={"annotator": name})
        assert response.status_code == 200, response.text
        return response.json()

    first = {name: next_item(name)["item"] for name in ("alice", "bob")}
    assert first["alice"] == first["bob"]
    held = []  # carol is never given the item alice and bob hold
    while not (item := next_item("carol"))["done"]:
        held.append(item["item"])
        assert clients["carol"].post("/api/skip", json={"annotator": "carol", "item": item["item"]}).status_code == 200
    assert first["alice"] not in held and len(held) == 2

    barrier, answers, errors = threading.Barrier(2), [], []

    def annotate(name: str) -> None:
        try:
            while not (item := next_item(name))["done"]:
                ranking = [[c["key"]] for c in sorted(item["candidates"], key=lambda c: c["text"])]
                barrier.wait(timeout=30)  # both submit at the same moment
                body = {"annotator": name, "item": item["item"], "version": item["version"], "ranking": ranking}
                answers.append((name, item["item"], clients[name].post("/api/submit", json=body).status_code))
        except Exception as error:  # reported below
            errors.append(f"{name}: {error!r}")
            barrier.abort()

    threads = [threading.Thread(target=annotate, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(answers) == sorted((name, i, 200) for name in ("alice", "bob") for i in (1, 2, 3))
    assert next_item("carol") == {"done": True}
    progress = clients["carol"].get("/api/progress", params={"annotator": "carol"}).json()
    assert progress["complete"] == 3 and progress["items"] == 3
    rows, _ = export_rows(LabelStore(server.database))
    assert sorted((r["item"], r["annotator"]) for r in rows) == [(i, n) for i in (1, 2, 3) for n in ("alice", "bob")]
    assert all(r["ranking"] == [1, 2, 3] for r in rows)  # a, b, c: sorted by text
    for client in clients.values():
        client.close()


# --- what protects the annotator's work ---------------------------------------------------------------------
def open_page(browser, server: Server, height: int = 800):
    """A new browser page on ``server``, signed in as alice, showing her first item."""
    context = browser.new_context(viewport={"width": 1100, "height": height})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    page.locator("#name-input").fill("alice")
    page.keyboard.press("Enter")
    page.locator("#candidates > li").first.wait_for()
    return page, context, errors


SYSTEM = "You are a poet. Answer in haiku, and never in rhyme."
EARLIER_ANSWER = "\n".join(f"Line {i} of a long answer about the sea." for i in range(1, 13))
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Write me a poem about the sea."},
    {"role": "assistant", "content": EARLIER_ANSWER},
    {"role": "user", "content": HAIKU},
]
TOOLS = [{"type": "function", "function": {"name": "rhymes_with", "parameters": {"type": "object"}}}]
CUT = "Rain taps on the glass\nthe kettle starts its soft hum\nand the afternoon"


def test_the_page_shows_every_turn_of_a_conversation_and_marks_cut_off_answers(browser, make_server):
    from playwright.sync_api import expect

    haikus = PROMPTS[0][3]
    candidates = [(haikus[0], True), (haikus[2], True), (haikus[3], True), (CUT, False)]
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]}  # fmt: skip
    with_tool = [{"role": "user", "content": "Weather in Oslo?"}, call, {"role": "tool", "content": "rain, 8 C"}]
    server = make_server([(CONVERSATION, TOOLS, HAIKU, candidates), (with_tool, None, "Weather in Oslo?", ["a", "b"])])
    page, context, errors = open_page(browser, server, height=1200)

    # Every turn, in order, in its own block under its role; the one the responses answer set apart.
    turns = page.locator("#conversation > li")
    expect(turns).to_have_count(4)
    assert turns.locator(".role").all_text_contents() == ["System", "User", "Assistant", "User"]
    assert turns.locator(".text").all_text_contents() == [m["content"] for m in CONVERSATION]
    expect(turns.nth(0)).to_be_visible()
    expect(turns.nth(3)).to_have_class("turn role-user final")
    expect(page.locator("#prompt")).to_have_text(HAIKU)
    # A long earlier turn is folded to its first lines, and unfolds.
    long_turn = turns.nth(2)
    folded = long_turn.locator(".text").bounding_box()["height"]
    assert folded < 150, folded
    long_turn.get_by_role("button", name="Show all").click()
    expect(long_turn.get_by_role("button", name="Show less")).to_have_attribute("aria-expanded", "true")
    assert long_turn.locator(".text").bounding_box()["height"] > 2 * folded
    # The tool definitions, folded.
    expect(page.locator("#tools summary")).to_have_text("Tools the assistant may call (1): rhymes_with")
    expect(page.locator("#tools-text")).to_be_hidden()

    # The answer stopped at the length limit is marked "cut off"; the others are not.
    cut_card = page.locator("#candidates > li", has_text="the kettle starts")
    expect(cut_card.locator(".cut-off")).to_have_text("✂ cut off")
    expect(cut_card.locator(".cut-off")).to_be_visible()
    expect(page.locator("#candidates .cut-off")).to_have_count(1)
    assert cut_card.get_attribute("aria-label").endswith(", cut off")

    long_turn.get_by_role("button", name="Show less").click()
    page.locator("#candidates > li").first.focus()
    rank_by_keyboard(page, [haikus[2], haikus[0], haikus[3], CUT])
    page.keyboard.press("ArrowUp")
    page.keyboard.press("t")
    if os.environ.get("RLHF_SCREENSHOTS") == "1":
        page.evaluate("window.scrollTo(0, 0)")
        page.mouse.move(0, 0)
        page.screenshot(path=str(ROOT / "docs" / "images" / "label-page.png"))
    page.keyboard.press("Enter")

    # Tool calls and tool results are turns too.
    expect(page.locator("#prompt")).to_have_text("rain, 8 C")
    assert turns.locator(".role").all_text_contents() == ["User", "Assistant", "Tool"]
    expect(turns.nth(1).locator(".call-name")).to_have_text("Calls the tool weather")
    expect(turns.nth(1).locator(".call .text")).to_contain_text('"city": "Oslo"')
    expect(page.locator("#tools")).to_be_hidden()
    assert errors == []
    context.close()


def test_enter_on_an_untouched_item_does_not_save_the_shown_order(browser, make_server):
    from playwright.sync_api import expect

    server = make_server(PROMPTS[:2])
    page, context, errors = open_page(browser, server)
    posts: list[str] = []
    page.on("request", lambda request: request.method == "POST" and posts.append(request.url))
    store = LabelStore(server.database)
    shown_order = texts(page)

    page.keyboard.press("Enter")  # by habit, before ranking anything
    expect(page.locator("#message")).to_contain_text("not moved or tied any response")
    expect(page.locator("#submit")).to_have_text("Confirm: the shown order is my ranking (Enter)")
    page.wait_for_timeout(300)
    assert posts == [] and store.counts()["judgements"] == 0
    expect(page.locator("#prompt")).to_have_text(HAIKU)

    page.keyboard.press("Enter")  # a second Enter confirms the shown order
    expect(page.locator("#prompt")).to_have_text(FRUITS)
    assert len(posts) == 1 and store.counts()["judgements"] == 1
    (row,) = export_rows(store)[0]
    assert dict(zip(row["responses"], row["ranking"])) == {text: i + 1 for i, text in enumerate(shown_order)}

    # Once a response is moved, one Enter submits; the rule is stated on the page.
    expect(page.locator("#enter-rule")).to_contain_text("press Enter (or Submit) twice")
    expect(page.locator("#submit")).to_have_text("Submit ranking (Enter)")
    page.keyboard.press("Alt+ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#done")).to_be_visible()
    assert store.counts()["judgements"] == 2
    assert errors == []
    context.close()


def test_a_skip_can_be_undone(browser, make_server):
    from playwright.sync_api import expect

    server = make_server(PROMPTS[:2])
    page, context, errors = open_page(browser, server)
    store = LabelStore(server.database)
    page.keyboard.press("Alt+ArrowDown")  # some work before the skip
    page.keyboard.press("c")
    page.keyboard.type("unsure")
    page.keyboard.press("Escape")
    before = shown(page)

    page.keyboard.press("s")
    expect(page.locator("#prompt")).to_have_text(FRUITS)
    undo = page.locator("#undo-skip")
    expect(undo).to_be_visible()
    expect(undo).to_have_text("Undo skip of item 1 (u)")
    assert store.progress("alice")["you"]["skipped"] == 1

    page.keyboard.press("u")
    expect(page.locator("#prompt")).to_have_text(HAIKU)  # back, with the order and comment made before
    expect(page.locator("#message")).to_contain_text("Item 1 is back")
    assert shown(page) == before
    expect(page.locator("#comment")).to_have_value("unsure")
    expect(undo).to_be_hidden()
    assert store.progress("alice")["you"]["skipped"] == 0
    page.reload()  # the server gives it back too: nothing depends on this tab
    expect(page.locator("#prompt")).to_have_text(HAIKU)

    # A skip of the last item is undone from the "nothing left" page, with the button.
    page.keyboard.press("Alt+ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#prompt")).to_have_text(FRUITS)
    page.locator("#skip").click()
    expect(page.locator("#done")).to_be_visible()
    page.locator("#undo-skip").click()
    # The done page hides the last prompt without clearing it: wait for the answer to the undo, not the text.
    expect(page.locator("#message")).to_contain_text("Item 2 is back")
    expect(page.locator("#done")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_text(FRUITS)
    you = store.progress("alice")["you"]
    assert (you["ranked"], you["skipped"]) == (1, 0)
    assert errors == []
    context.close()


def test_a_very_long_answer_keeps_submit_in_reach(browser, make_server):
    long_answer = ("All work and no play makes a long answer. " * 500)[:20_000]
    server = make_server([(HAIKU, None, HAIKU, ["Short.", long_answer, "Also short."])])
    page, context, errors = open_page(browser, server)
    viewport = page.viewport_size
    card = page.locator("#candidates > li", has_text="All work")
    assert len(card.locator(".text").text_content()) == 20_000  # all of it is there, in a box that scrolls

    def in_view(locator) -> bool:
        box = locator.bounding_box()
        return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"]

    assert card.bounding_box()["height"] < viewport["height"] / 2
    assert page.evaluate("window.scrollY") == 0
    assert in_view(page.locator("#submit")) and in_view(page.locator("#skip"))
    # Shown in full, the answer is taller than the window, and Submit stays at the bottom of it.
    card.get_by_role("button", name="Show all").click()
    assert card.bounding_box()["height"] > 3 * viewport["height"]
    for y in (0, 2000, 6000):
        page.evaluate(f"window.scrollTo(0, {y})")
        assert in_view(page.locator("#submit")), y
    page.keyboard.press("e")  # the focused response (the long one) is shortened again by key
    assert card.bounding_box()["height"] < viewport["height"] / 2
    assert errors == []
    context.close()


def test_direction_control_characters_are_shown_not_applied(browser, make_server):
    from playwright.sync_api import expect

    every = "x\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061cy"
    conversation = [{"role": "system", "content": "sys\u202etem"}, {"role": "user", "content": "Reverse?"}]
    server = make_server([(conversation, None, "Reverse?", ["abc\u202edef", every, "plain"])])
    page, context, errors = open_page(browser, server)
    card = page.locator("#candidates > li", has_text="abc")
    text = card.locator(".text")
    expect(text).to_have_text("abc⟨RLO⟩def")
    expect(text.locator(".bidi-mark")).to_have_count(1)
    # displayed in logical order: "d" is right of "c" (an applied override would put "f" there)
    lefts = text.evaluate(
        """node => ["c", "d", "f"].map(ch => {
            const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
            for (let t = walker.nextNode(); t; t = walker.nextNode()) {
                const at = t.data.indexOf(ch);
                if (at >= 0) { const r = document.createRange(); r.setStart(t, at); r.setEnd(t, at + 1);
                               return r.getBoundingClientRect().left; }
            }
        })"""
    )
    assert lefts[0] < lefts[1] < lefts[2], lefts
    names = "LRE RLE PDF LRO RLO LRI RLI FSI PDI LRM RLM ALM".split()
    expect(page.locator("#candidates > li", has_text="⟨LRE⟩").locator(".text")).to_have_text(
        "x" + "".join(f"⟨{n}⟩" for n in names) + "y"
    )
    expect(page.locator("#conversation .text").first).to_have_text("sys⟨RLO⟩tem")
    assert errors == []
    context.close()
