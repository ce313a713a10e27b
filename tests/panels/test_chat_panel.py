"""The chat panel: streamed answers in the transcript, base beside tuned for LoRA, the checkpoint chooser, Stop and
Clear; and the Studio's Chat tab talking to the run the Train tab just trained."""
import time

import pytest

import ftnb
from ftnb.core.chat import chat_stream
from ftnb.panels import Chat


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    data = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
    return ftnb.train(model="tiny", data=data, output_dir=str(tmp_path_factory.mktemp("runs")), run_name="lora",
                      max_steps=6, batch_size=4, eval_every=3, save_every=3, probe=False, learning_rate=1e-2)


def test_send_streams_base_beside_tuned_and_keeps_the_conversation(lora_run):
    chat = Chat(run_dir=lora_run.run_dir.path, redraw_interval=0.02)
    assert [v for _, v in chat.checkpoint.options] == ["last", "best", 3, 6]
    assert chat.lora and not chat.side_by_side.disabled and chat.base_column.layout.display is None
    assert "talking to the final weights (step 6)" in chat.status.value
    chat.greedy.value = True
    assert chat.temperature.disabled and chat.top_p.disabled
    chat.max_new_tokens.value = 30
    seen = []
    chat.transcripts["tuned"].observe(lambda ch: seen.append(ch["new"]), names="value")
    question = "What is 3 plus 3?"
    chat.input.value = question
    answer = chat.send()  # from code: waits, and returns the tuned answer
    model, tok = chat.run.model, chat.run.tokenizer
    assert answer == "".join(chat_stream(model, tok, question, max_new_tokens=30, greedy=True)).strip()
    assert chat.input.value == "" and chat.messages == [{"role": "user", "content": question},
                                                          {"role": "assistant", "content": answer}]
    base = "".join(chat_stream(model, tok, question, max_new_tokens=30, greedy=True, adapter=False)).strip()
    assert chat.base_messages[1]["content"] == base != answer
    live = [v for v in seen if "ftnb-live" in v]
    assert len({v for v in live}) > 3  # the answer grew in the transcript while it was generated
    assert "ftnb-live" not in chat.transcripts["tuned"].value
    assert "answered (tuned: cut at max tokens, base: cut at max tokens)" in chat.status.value
    assert chat.send_button.disabled is False and chat.stop_button.disabled is True

    chat.system.value = "Be brief."
    chat.send("And <b>4</b> plus 4?")  # the second turn renders the first exchange and the system prompt
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 2
    assert chat.conversations["tuned"].last.prompt == tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *chat.messages[:3]], tokenize=False, add_generation_prompt=True)
    assert "And &lt;b&gt;4&lt;/b&gt; plus 4?" in chat.transcripts["tuned"].value and "<b>4</b>" not in \
        chat.transcripts["tuned"].value  # the user's text is text
    chat.clear_button.click()
    assert chat.messages == [] and chat.base_messages == [] and 'class="ftnb-msg' not in chat.transcripts["tuned"].value
    chat.close()


def test_stop_ends_the_answer_and_skips_the_base_one(lora_run):
    chat = Chat(run_dir=lora_run.run_dir.path)
    chat.greedy.value = True
    chat.max_new_tokens.value = 3000
    chat.input.value = "Tell me everything."
    chat.send_button.click()  # the button does not wait
    deadline = time.time() + 60
    while not (chat.streaming.get("tuned") and chat.streaming["tuned"].text) and time.time() < deadline:
        time.sleep(0.05)
    assert chat.busy and not chat.stop_button.disabled and chat.send_button.disabled
    assert "(answers when the tuned model is done)" in chat.transcripts["base"].value  # the question shows there too
    assert chat.send("meanwhile") is None and "still answering" in chat.status.value
    chat.stop_button.click()
    chat.wait(60)
    assert not chat.busy and chat.stop_button.disabled
    assert f"stopped after {len(chat.conversations['tuned'].last.tokens)} tokens" in chat.status.value
    assert chat.conversations["tuned"].last.finish == "stopped" and len(chat.conversations["tuned"].last.tokens) < 3000
    assert chat.base_messages == [{"role": "user", "content": "Tell me everything."},
                                  {"role": "assistant", "content": ""}]
    assert "(stopped before it began)" in chat.transcripts["base"].value
    chat.close()


def test_the_checkpoint_chooser_reloads_the_run(lora_run):
    chat = Chat(run_dir=lora_run.run_dir.path)
    first = chat.run
    chat.checkpoint.value = 3
    chat.wait(60)
    assert chat.run is not first and chat.run.weights == "checkpoint of step 3" and chat.loaded == 3
    assert "talking to checkpoint of step 3" in chat.status.value
    chat.checkpoint.value = "best"
    chat.wait(60)
    assert chat.run.weights == f"the best checkpoint of step {lora_run.run_dir.status()['best_checkpoint']}"
    chat.close()


def test_a_full_fine_tune_has_no_base_column(tmp_path, qa_data):
    run = ftnb.train(model="tiny", data=qa_data, output_dir=str(tmp_path), run_name="full", method="full",
                     max_steps=2, batch_size=4, probe=False)
    chat = Chat(run)  # a run in memory: its model as it is
    assert chat.loaded == "live" and not chat.lora and chat.side_by_side.disabled
    assert chat.base_column.layout.display == "none" and "no base model beside it" in chat.status.value
    chat.greedy.value, chat.max_new_tokens.value = True, 5
    assert chat.send("Hello") == chat.messages[1]["content"] and chat.base_messages == []
    chat.close()


def test_the_studio_chat_tab_talks_to_the_run_just_trained(qa_data):
    s = ftnb.Studio(data=qa_data)
    assert s.tabs.get_title(6) == "Chat" and s.tabs.children[6] is s.chat.root
    s.chat.input.value = "Hi"
    s.chat.send_button.click()
    assert "no run yet" in s.chat.status.value and s.chat.messages == [] and s.chat.input.value == "Hi"
    s.form.fields["max_steps"].value = 2
    s.form.fields["probe"].value = False
    s.monitor.start()
    s.monitor.wait(120)
    assert s.chat.run is s.monitor.run and s.chat.lora and "the run just trained" in s.chat.status.value
    assert s.chat.checkpoint.options[0][1] == "last"
    s.chat.max_new_tokens.value = 4
    s.chat.send("Hi")
    assert len(s.chat.messages) == len(s.chat.base_messages) == 2
    s.close()
