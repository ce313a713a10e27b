import json
import subprocess
import sys

import pytest

from ftnb.cli import main


def test_train_runs_export_from_the_command_line(tmp_path, qa_data, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_data))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "tiny", "epochs": 1, "batch_size": 4}))
    main(["train", "--config", str(cfg), "--data", str(data), "--output-dir", str(tmp_path / "runs"),
          "--run-name", "cli", "--lora-r", "4", "--learning-rate", "0.001", "--no-gradient-checkpointing"])
    run = tmp_path / "runs" / "cli"
    saved = json.loads((run / "config.json").read_text())
    assert saved["lora_r"] == 4 and saved["epochs"] == 1 and saved["learning_rate"] == 0.001
    main(["runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "cli" in out and "finished" in out
    main(["export", str(run), "--merge", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert "merged: True" in out and (tmp_path / "merged" / "model.safetensors").exists()
    with pytest.raises(SystemExit) as e:  # never overwrite what is there
        main(["export", str(run), "--merge", str(tmp_path / "merged")])
    assert e.value.code == 2


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": ""}\n')
    r = subprocess.run([sys.executable, "-m", "ftnb.cli", "train", "--data", str(bad), "--model", "tiny",
                        "--output-dir", str(tmp_path / "runs")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert f"{bad}: no usable examples (line 1, field 'completion': empty content)" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ftnb.cli", "train", "--data", str(bad), "--learning-rate", "7"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "learning_rate: must be in (0, 1]" in r.stderr


def test_stop_command_writes_the_request(tmp_path, tiny_cfg, qa_data):
    import ftnb
    run = ftnb.train(tiny_cfg, qa_data, max_steps=1)
    main(["stop", str(run.run_dir.path)])
    assert run.run_dir.stop_requested()


def test_probe_command_prints_the_forgetting_summary(tiny_cfg, qa_data, capsys):
    import ftnb
    run = ftnb.train(tiny_cfg, qa_data, learning_rate=5e-3)
    main(["probe", str(run.run_dir.path)])
    out = capsys.readouterr().out
    assert "retention:" in out and "KL" in out and "flipped right -> wrong" in out


def test_forgetting_demo_writes_both_runs_and_the_figure(tmp_path, capsys):
    main(["demo", "--forgetting", "--model", "tiny", "--output-dir", str(tmp_path / "contrast")])
    out = capsys.readouterr().out
    assert "== aggressive-full" in out and "== lora-defaults" in out and out.count("retention:") == 2
    assert (tmp_path / "contrast" / "learning-vs-forgetting.html").exists()
    import ftnb
    runs = {r["name"]: r for r in ftnb.list_runs(tmp_path / "contrast")}
    assert runs["aggressive-full"]["state"] == runs["lora-defaults"]["state"] == "finished"


def test_version(capsys):
    import ftnb
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ftnb {ftnb.__version__}"
