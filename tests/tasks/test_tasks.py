"""The development tasks: each rule by hand on answers a person can check, the generator's rows, and the shipped
files agree with their rule and keep the held-out prompts apart."""

import pytest

from rlhf_lightning.data.readers import read_rows
from rlhf_lightning.tasks import ASSETS, TASKS, lengths, lists, tone
from rlhf_lightning.tasks.base import ends_sentence, evasive, markers, stems
from rlhf_lightning.tasks.generate import build_rows, describe, main, split_prompts, write_jsonl


def rows(name: str) -> list[dict]:
    return [row for _, row in read_rows(f"builtin:{name}.jsonl")]


def test_the_shared_measures_by_hand():
    # stems: inflections and plurals meet their word; a possessive is its word; a contraction of function words
    # is no content word
    assert stems("Why do we yawn? Cats purr; dry eggs") == stems("Yawning cats purring, the egg dries")
    assert stems("What's the best way to store fresh herbs?") == {"store", "fresh", "herb"}
    assert stems("my dog's bed, I don't know") == stems("dog bed know")
    # refusals and AI disclaimers, not sympathy or the person's own words
    said = [
        "As a text-based AI, I'm designed to inform.",
        "I'm a helpful AI named Sam.",
        "I'm not equipped to cook.",
        "I cannot help with that.",
        "I'm sorry to hear it.",
        "I cannot sleep.",
        "I can't help but smile.",
    ]
    assert [evasive(t) for t in said] == [True, True, True, True, False, False, False]
    # whole words, not negated just before; a negated command still says the word
    assert markers("hopeless, thankless", ("hope", "thank you")) == 0
    assert markers("I don't appreciate it. Don't be lazy.", ("appreciate", "lazy")) == 1  # lazy
    # a quote that opens at the end is a cut answer, a closing one ends the sentence
    assert [ends_sentence(t) for t in ('the best word is the "', 'He said "hi."', "See above (p. 2)")] == [
        False, True, True,
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_rule_scores_the_request_repeated_back_below_most_real_answers(name):
    """The request repeated back answers nothing: every rule takes 3 points from it, and it scores above the
    median real answer on few prompts (the reward stage's degenerate check flags more than half). The first
    lengths and tone rules had no such part: the echo beat the median real answer on 54% and 39% of prompts,
    and one lengths pair chose it."""
    task = TASKS[name]
    answers: dict[str, list[float]] = {}
    for r in rows(f"{name}_samples"):
        if r["text"].strip():
            answers.setdefault(r["prompt"], []).append(r["gold"])
    above = 0
    for prompt, scores in answers.items():
        assert task.gold_parts(prompt, prompt)["echo"] == -3.0, prompt
        above += task.gold_score(prompt, prompt) > sorted(scores)[len(scores) // 2]
    assert above / len(answers) < 0.2


def test_lists_rule_by_hand():
    prompt = "Give me 3 fruits that are high in vitamin C, as a numbered list."
    assert lists.asked_count(prompt) == 3 and lists.asked_count("Name four birds.") == 4
    exact = "Here you go:\n1. Oranges\n2. Kiwis\n3. Strawberries"
    assert lists.gold_parts(prompt, exact) == {"count": 2.0, "numbered": 0.5, "concise": 0.0, "length": 0.0,
                                               "repetition": 0.0, "echo": 0.0}  # fmt: skip
    # one item too many, as bullets: 2 - 0.75, no numbering credit
    bullets = "- Oranges\n- Kiwis\n- Strawberries\n- Lemons"
    assert lists.gold_parts(prompt, bullets)["count"] == 1.25 and lists.gold_parts(prompt, bullets)["numbered"] == 0.0
    # sub-items (indented deeper than the first level) are not items
    nested = "1. Oranges\n   - navel\n   - blood\n2. Kiwis\n3. Lemons"
    assert lists.list_items(nested) == [(1, "1. Oranges"), (2, "2. Kiwis"), (3, "3. Lemons")]
    # bullets under numbered items are their points, at any indentation
    points = "1. Oranges:\n- sweet\n- juicy\n2. Kiwis\n3. Lemons"
    assert [n for n, _ in lists.list_items(points)] == [1, 2, 3] and lists.gold_parts(prompt, points)["count"] == 2.0
    # every way the model writes a numbered or lettered list counts; a decimal or "e.g." starting a line does not
    for written in ("**1.** Oranges\n**2.** Kiwis\n**3.** Lemons", "1.Oranges\n2.Kiwis\n3.Lemons",
                    "### 1. Oranges\n### 2. Kiwis\n### 3. Lemons", "a) Oranges\nb) Kiwis\nc) Lemons",
                    "I. Oranges\nII. Kiwis\nIII. Lemons", "A. Oranges\nB. Kiwis\nC. Lemons"):  # fmt: skip
        assert [n for n, _ in lists.list_items(written)] == [1, 2, 3], written
        parts = lists.gold_parts(prompt, written)
        assert parts["count"] == 2.0 and parts["numbered"] == 0.5
    assert lists.list_items("1.5 cups of juice\ne.g. orange juice") == []
    lettered = "1. Citrus:\na) oranges\nb) lemons\n2. Kiwis\n3. Guava"  # letters under numbers are its points
    assert [n for n, _ in lists.list_items(lettered)] == [1, 2, 3]
    assert lists.gold_parts(prompt, "Oranges, kiwis and strawberries are high in vitamin C.")["count"] == -1.5
    long_item = "1. " + " ".join(["word"] * 30) + "\n2. Kiwis\n3. Lemons"
    assert lists.gold_parts(prompt, long_item)["concise"] == pytest.approx(-1 / 3)
    # 85 words (9 + 76; the item numbers count) against a budget of 15 x 3 + 20 = 65: -20/40
    padded = exact + "\n" + " ".join(f"w{i}" for i in range(76))
    assert lists.gold_parts(prompt, padded)["length"] == pytest.approx(-0.5)
    assert lists.gold_score(prompt, "") == -3.0
    assert lists.gold_score(prompt, exact) > lists.gold_score(prompt, bullets) > lists.gold_score(prompt, "No list.")
    with pytest.raises(ValueError, match="no count"):
        lists.asked_count("List some fruits.")


def test_lengths_rule_by_hand():
    two, short = "In two sentences, why do cats purr?", "In under 15 words, why do cats purr?"
    assert lengths.asked_length(two) == ("sentences", 2, "why do cats purr?")
    assert lengths.asked_length("Why do cats purr? Answer in about 50 words.") == ("about", 50, "Why do cats purr?")
    answer = "Cats purr when they are content. Purring may also soothe them."
    assert lengths.sentence_count(answer) == 2 and lengths.sentence_count("1. Cats purr. And then") == 2
    parts = lengths.gold_parts(two, answer)
    assert parts["length"] == 2.0 and parts["relevance"] == 1.0 and parts["finished"] == 0.5  # cats, purr: 2 of 2
    assert lengths.gold_parts(two, "Cats purr.")["length"] == 1.0  # one sentence short
    assert lengths.gold_parts(two, "Yes. Cats purr. Dogs bark. Birds sing. Fish swim.")["length"] == -1.0  # 5: 2 - 3
    # what ends a sentence and what does not: a number's stop does, a decimal point, a list number, an
    # abbreviation or an initial before more text do not
    texts = ("It was built in 1990. It is old.", "Add salt, e.g. sea salt. Stir.", "It weighs 5.5 kg. Done",
             "Dr. Smith and J. K. Rowling agree.", "1) Cats purr.\n2) Dogs bark.", "Why? Because!",
             'It is called "photosynthesis." Plants use light.', "The fever was 38.5. Rest helps.",
             "Oranges have vitamin C. They help.")  # fmt: skip
    assert [lengths.sentence_count(t) for t in texts] == [2, 2, 2, 1, 2, 2, 2, 2, 2]
    assert lengths.gold_parts(two, "Yawning cools the brain.")["relevance"] == 0.0  # "why do cats purr": no word
    assert lengths.gold_parts("In one sentence, why do we yawn?", "Yawning cools the brain.")["relevance"] == 1.0
    assert lengths.gold_parts(short, "It weighs 5.5 kg.") == lengths.gold_parts(short, "It weighs 5 kg.")  # 4 words
    assert lengths.gold_parts(short, " ".join(["purr"] * 15) + ".")["length"] == 2.0
    assert lengths.gold_parts(short, " ".join(f"w{i}" for i in range(21)) + ".")["length"] == pytest.approx(
        2 - 2 * 6 / 15
    )  # fmt: skip
    about = "Why do cats purr? Answer in about 50 words."
    assert lengths.gold_parts(about, " ".join(f"w{i}" for i in range(40)) + ".")["length"] == pytest.approx(1.6)
    assert lengths.gold_parts(about, "Cats purr.")["length"] == pytest.approx(2 - 2 * 48 / 50)  # too short too
    assert lengths.gold_parts(about, " ".join(f"w{i}" for i in range(200)))["length"] == -2.0  # the floor
    assert lengths.gold_score(two, "") == -3.0
    with pytest.raises(ValueError, match="no length request"):
        lengths.asked_length("Why do cats purr?")


def test_tone_rule_by_hand():
    prompt = "Write a short message to a coworker who missed our project deadline."
    kind = "Hi Sam, thank you for your work so far. I understand things got busy; could you send it by Friday?"
    parts = tone.gold_parts(prompt, kind)
    # thank, understand, could you: 3 markers -> 1.5 (the cap); speaks to the person; ends a sentence
    assert parts["courtesy"] == 1.5 and parts["harsh"] == 0.0 and parts["addressed"] == 0.5
    assert parts["finished"] == 0.5 and parts["shouting"] == 0.0
    harsh = "Sam, missing the deadline was unacceptable and your fault. Send it immediately."
    assert tone.gold_parts(prompt, harsh)["harsh"] == -2.0  # three markers, floor -2
    assert tone.gold_parts(prompt, "Send it NOW, RIGHT NOW please.")["shouting"] == -1.0
    assert tone.gold_parts(prompt, "Please send it!!")["shouting"] == -1.0
    assert tone.gold_parts(prompt, "Could you send it to the CEO? The SPCA needs it ASAP.")["shouting"] == 0.0
    assert tone.gold_parts(prompt, "As an AI I cannot write messages.")["refusal"] == -1.0
    assert tone.gold_parts(prompt, "I'm sorry, but I can't help with that.")["refusal"] == -1.0
    # sympathy and the person's own words are not refusals
    assert tone.gold_parts(prompt, "I'm sorry to hear that. I cannot sleep either.")["refusal"] == 0.0
    # whole words only: "hopeless" and "thankless" are no courtesy; a negated marker does not count either way
    assert tone.gold_parts(prompt, "This hopeless, thankless project is over.")["courtesy"] == 0.0
    rude = "I don't appreciate this and I am not happy to wait."
    assert tone.gold_parts(prompt, rude)["courtesy"] == 0.0
    assert tone.gold_parts(prompt, "It's not your fault, and I'm never annoyed with you.")["harsh"] == 0.0
    assert tone.gold_parts(prompt, "Please don't hesitate to let me know. I can't thank you enough.")["courtesy"] == 1.5
    assert tone.gold_parts(prompt, "I immediately checked my notes.")["harsh"] == 0.0
    assert tone.gold_parts(prompt, "See you at 9 AM EST.\n[YOUR NAME]")["shouting"] == 0.0  # a time, a placeholder
    assert tone.gold_parts(prompt, "As a text-based AI, I'm designed to inform.")["refusal"] == -1.0
    # a message that ends with a sign-off is finished; "you're" speaks to the person, "[Your Name]" does not
    for signed in ("I know you're busy.\n\nBest regards,\nDr. Emma Taylor", "I know you're busy.\n[Your Name]"):
        assert (
            tone.gold_parts(prompt, signed)["finished"] == 0.5 and tone.gold_parts(prompt, signed)["addressed"] == 0.5
        )
    assert tone.gold_parts(prompt, "Hello there.\n[Your Name]")["addressed"] == 0.0
    assert tone.gold_parts(prompt, "Hello, I wanted to say that")["finished"] == -0.5
    assert tone.gold_parts(prompt, " ".join(f"w{i}" for i in range(140)) + ".")["length"] == -1.0  # 60 over 80
    assert tone.gold_score(prompt, kind) > tone.gold_score(prompt, harsh) and tone.gold_score(prompt, "") == -3.0


def test_generated_rows_pair_the_best_and_worst_answer_and_leave_close_calls_out(tmp_path):
    task = TASKS["lists"]
    prompts = ["List two birds.", "List three birds."]
    answers = [
        [{"text": "1. Robin\n2. Wren", "finished": True}, {"text": "Birds are nice", "finished": False},
         {"text": "", "finished": True}],
        [{"text": "1. Robin\n2. Wren\n3. Tit", "finished": False}, {"text": "1. Robin\n2. Wren\n3. Owl",
                                                                    "finished": True}],
    ]  # fmt: skip
    built = build_rows(task, prompts, answers)
    # the empty answer scores lowest (-3) but never enters a pair; the two equal lists are too close to call
    assert built["comparisons"] == [{"prompt": prompts[0], "chosen": "1. Robin\n2. Wren", "rejected": "Birds are nice"}]
    # the first *finished* answer is the demonstration, whatever its score
    assert built["demonstrations"] == [{"prompt": prompts[0], "completion": "1. Robin\n2. Wren"},
                                       {"prompt": prompts[1], "completion": "1. Robin\n2. Wren\n3. Owl"}]  # fmt: skip
    assert [s["gold"] for s in built["samples"]] == [task.gold_score(p, a["text"]) for p, g in zip(prompts, answers)
                                                    for a in g]  # fmt: skip
    # the description quoted in docs/development-task.md, from the written files
    for kind, key in (("demonstrations", "demonstrations"), ("comparisons", "comparisons"), ("prompts", "prompts"),
                      ("samples", "samples"), ("comparisons_heldout", None), ("prompts_heldout", None)):  # fmt: skip
        write_jsonl(built[key] if key else [], tmp_path / f"lists_{kind}.jsonl")
    lines = describe(task, tmp_path).splitlines()
    assert lines[0].endswith("2 training and 0 held-out prompts, 1 training and 0 held-out pairs, 2 demonstrations")
    assert lines[1] == "  answers: 60% finished, 4 words on average"  # 3 of 5 finished; (4 + 3 + 0 + 6 + 6) / 5 = 3.8
    # one pair: the chosen list (2 items of 2 asked, numbered) against no list; the chosen one is longer (4 > 3)
    assert (
        lines[2]
        == "  training pairs: the chosen answer is the shorter in 0%; it leads on count +3.50, numbered +0.50, "
        "concise +0.00, length +0.00, repetition +0.00, echo +0.00"
    )


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shipped_files_follow_the_rule_and_keep_held_out_prompts_apart(name):
    task = TASKS[name]
    assert len(task.prompts) == len(set(task.prompts))
    train, held = rows(f"{name}_prompts"), rows(f"{name}_prompts_heldout")
    expected_train, expected_held = split_prompts(task)
    assert [r["prompt"] for r in train] == expected_train and [r["prompt"] for r in held] == expected_held
    assert len(held) == task.heldout and not set(expected_train) & set(expected_held)
    pairs, held_pairs = rows(f"{name}_comparisons"), rows(f"{name}_comparisons_heldout")
    assert {p["prompt"] for p in pairs} <= set(expected_train) and {p["prompt"] for p in held_pairs} <= set(
        expected_held
    )
    assert len(pairs) >= 0.7 * len(train) and len(held_pairs) >= 0.7 * len(held)
    for pair in pairs + held_pairs:  # every label is the rule's, by at least 0.5
        assert (
            task.gold_score(pair["prompt"], pair["chosen"]) - task.gold_score(pair["prompt"], pair["rejected"]) >= 0.5
        )
    demonstrations = rows(f"{name}_demonstrations")
    assert {d["prompt"] for d in demonstrations} <= set(expected_train) and len(demonstrations) >= 0.5 * len(train)
    samples = rows(f"{name}_samples")
    assert len(samples) == 4 * len(task.prompts)
    assert all(s["gold"] == task.gold_score(s["prompt"], s["text"]) for s in samples)


def test_generate_relabels_the_samples_in_its_folder_and_refuses_what_would_lose_files(tmp_path, capsys):
    shipped = ASSETS / "lists_samples.jsonl"
    (tmp_path / "lists_samples.jsonl").write_text(shipped.read_text("utf-8"), "utf-8")
    main(["lists", str(tmp_path), "--relabel"])  # labels the copy again: the shipped files, to the byte
    for kind in ("comparisons", "comparisons_heldout", "demonstrations", "prompts", "prompts_heldout", "samples"):
        assert (tmp_path / f"lists_{kind}.jsonl").read_bytes() == (ASSETS / f"lists_{kind}.jsonl").read_bytes(), kind
    capsys.readouterr()
    for argv, message in (
        (["lists", "--limit", "2"], "--limit writes a trial of 2 prompts: give an out_dir"),  # not into the assets
        (["lists", "--limit", "0", str(tmp_path)], "argument --limit: must be at least 1, got 0"),
        (["lists", str(tmp_path / "empty"), "--describe"], "lists_samples.jsonl: write the task's files there first"),
        (["lists", str(tmp_path / "empty"), "--relabel"], "lists_samples.jsonl: write the task's files there first"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
    write_jsonl([], tmp_path / "lists_comparisons.jsonl")  # no pairs at all: said, not a division by zero
    assert describe(TASKS["lists"], tmp_path).startswith("lists: 900 sampled answers and no training pairs in")
