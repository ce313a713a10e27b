"""The hyperparameter form, generated from TrainConfig: one widget per field, its help as tooltip, its validation
message inline. The form holds no rules of its own: every change builds a TrainConfig and shows what it says."""
import dataclasses
import json
import os

import ipywidgets as w

from ..core.config import PRESETS, TrainConfig
from ..core.errors import ConfigError
from ._common import TEXT, Panel, esc, full_width, message


def count(n):
    """135M, 4.9M, 101K, 512: a parameter count as people say it."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def duration(seconds):
    """'under a second', '40 s', '3.5 min', '2.1 h'."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


CUSTOM = "(your own settings)"  # the preset dropdown when the settings came from no preset
GROUPS = [("model", "Model"), ("lora", "LoRA adapters"), ("data", "Data"), ("training", "Training"),
          ("forgetting", "Forgetting: probe and mitigations"), ("runtime", "Run")]
NO_DATA = ("time: needs the data's size (show_estimate(tokens_per_epoch=...), or estimate in the Studio, whose "
           "Data tab counts its tokens)")
MODEL_CHOICES = ["default", "tiny", "HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"]


def label(name, meta=None):
    """What a setting is called on screen, in every panel that edits it: the field's label, else its name in words
    (kl_beta -> "kl beta")."""
    return (meta or {}).get("label") or name.replace("_", " ")


def _widget(name, meta, value):
    kw = {"description": label(name, meta), "tooltip": meta["help"], "style": {"description_width": "150px"},
          "layout": w.Layout(width="420px")}
    if name == "model":
        return w.Combobox(value=value, options=MODEL_CHOICES, ensure_option=False, **kw)
    if "choices" in meta:
        return w.Dropdown(options=list(meta["choices"]), value=value, **kw)
    if "item_choices" in meta:  # a list of names from a fixed set (report_to)
        return w.SelectMultiple(options=list(meta["item_choices"]), value=tuple(value), rows=len(meta["item_choices"]),
                                **kw)
    if isinstance(meta["default"], bool):
        kw.pop("style")
        return w.Checkbox(value=value, indent=False, **kw)
    if isinstance(meta["default"], int):
        return w.IntText(value=value, **kw)
    if isinstance(meta["default"], float):
        return w.FloatText(value=value, **kw)
    if isinstance(meta["default"], list):
        return w.Textarea(value="\n".join(value), placeholder="one per line", **kw)
    if isinstance(meta["default"], dict):
        return w.Text(value=json.dumps(value) if value else "", placeholder='{"prompt": "question"}', **kw)
    return w.Text(value=value, **kw)


class FieldView:
    """Another panel's view of one TrainConfig field: a widget made as the form makes its own (same kind, no range of
    its own), bound to the form's widget so there is one value, and the form's message for that field below it
    (`widget`, `error`). close() unbinds and closes the view; the form's widget stays."""

    def __init__(self, form, name, width=None, description_width=None):
        meta = form.meta[name]
        self.name, self.widget, self.error = name, _widget(name, meta, meta["default"]), w.HTML()
        if width:
            self.widget.layout.width = width
        if description_width and hasattr(self.widget.style, "description_width"):
            self.widget.style.description_width = description_width
        self._links = [w.link((form.fields[name], "value"), (self.widget, "value")),  # the form's value first
                       w.dlink((form.errors[name], "value"), (self.error, "value"))]

    def close(self):
        for link in self._links:
            link.unlink()
        self._links = []  # closing twice (ipywidgets closes a widget again when it is collected) is harmless
        self.widget.close()
        self.error.close()


def _read(widget, meta):
    v = widget.value
    if "item_choices" in meta:
        return list(v)
    if isinstance(meta["default"], list):
        return [line for line in v.splitlines() if line.strip()]
    if isinstance(meta["default"], dict):
        return json.loads(v) if v.strip() else {}
    return v


class ConfigForm(Panel):
    """form = ConfigForm(preset="quick-cpu-demo"); form.config -> the TrainConfig (raises when invalid)."""

    def __init__(self, config=None, preset=None, estimate_tokens=None):
        self.meta = TrainConfig.field_help()
        cfg = config or (TrainConfig.from_preset(preset) if preset else TrainConfig())
        if config is None and os.environ.get("FTNB_DEFAULT_MODEL"):  # CI and demos point the form at another model
            cfg = cfg.replace(model=os.environ["FTNB_DEFAULT_MODEL"])
        self._config, self.error = cfg, None
        self.estimate_tokens = estimate_tokens  # tokens per epoch, or a function that counts them (the Studio's Data tab)
        self.fields, self.errors = {}, {}
        sections = []
        for group, title in GROUPS:
            rows = []
            for name, meta in self.meta.items():
                if meta["group"] != group:
                    continue
                self.fields[name] = _widget(name, meta, getattr(cfg, name))
                self.errors[name] = w.HTML()
                help_ = w.HTML(f'<span title="{esc(meta["help"])}" style="color:{TEXT["help"]};cursor:help">?</span>')
                rows.append(w.VBox([w.HBox([self.fields[name], help_]), self.errors[name]]))
                self.fields[name].observe(self._changed, names="value")
            sections.append(w.VBox(rows))
        self.accordion = w.Accordion(children=sections, selected_index=0)
        for i, (_, title) in enumerate(GROUPS):
            self.accordion.set_title(i, title)
        self.preset = w.Dropdown(options=[(CUSTOM, "")] + [(p, p) for p in PRESETS], description="preset",
                                 value=preset if config is None and preset in PRESETS else "")
        self.apply_preset_button = w.Button(description="Apply preset", icon="magic")
        self.apply_preset_button.on_click(lambda _: self.apply_preset(self.preset.value))
        self.preset_help = w.HTML()
        self.preset.observe(lambda _: self._show_preset_help(), names="value")
        self._show_preset_help()
        self.path = w.Text(value="ftnb-config.json", description="file")
        self.save_button = w.Button(description="Save JSON", icon="save")
        self.load_button = w.Button(description="Load JSON", icon="folder-open")
        self.save_button.on_click(lambda _: self._try(self.save, self.path.value))
        self.load_button.on_click(lambda _: self._try(self.load, self.path.value))
        self.estimate_button = w.Button(description="Estimate memory and time", icon="calculator",
                                        layout=w.Layout(width="auto"))
        self.estimate_button.on_click(lambda _: self._try(self.show_estimate))
        self.estimate_html = w.HTML()
        self.status = w.HTML(message("ok", "settings are valid"))
        self.root = w.VBox([w.HBox([self.preset, self.apply_preset_button]), self.preset_help, self.accordion,
                            self.status, w.HBox([self.estimate_button]), self.estimate_html,
                            w.HBox([self.path, self.save_button, self.load_button])], layout=full_width())

    # -- state in and out --
    def field_view(self, name, width=None, description_width=None):
        """A view of field `name` for another panel (the forgetting panel's switches, the Data tab's split): same
        widget kind as here, bound to this form's, with this form's validation message. Close it with the panel."""
        return FieldView(self, name, width, description_width)

    def values(self):
        return {name: _read(widget, self.meta[name]) for name, widget in self.fields.items()}

    @property
    def config(self):
        """The TrainConfig the form shows; raises ConfigError (with the field) when a value is invalid."""
        if self.error:
            raise self.error
        return self._config

    def _changed(self, _=None):
        for box in self.errors.values():
            box.value = ""
        try:
            self._config, self.error = TrainConfig.from_dict(self.values()), None
            self.status.value = message("ok", "settings are valid")
            if self.preset.value and not self._is_preset(self.preset.value):
                self.preset.value = ""  # edited: no longer the preset's settings
        except json.JSONDecodeError as e:
            self.error = ConfigError("columns", f"not valid JSON ({e.msg})")
        except ConfigError as e:
            self.error = e
        if self.error:
            if self.error.field in self.errors:
                self.errors[self.error.field].value = message("error", self.error.message)
            self.status.value = message("error", str(self.error))

    def set_config(self, cfg):
        for f in dataclasses.fields(TrainConfig):
            v = getattr(cfg, f.name)
            widget = self.fields[f.name]
            if isinstance(v, list):
                v = tuple(v) if "item_choices" in f.metadata else "\n".join(v)
            elif isinstance(v, dict):
                v = json.dumps(v) if v else ""
            widget.value = v
        self._changed()

    def apply_preset(self, name):
        if name not in PRESETS:
            return
        keep = {k: self.values()[k] for k in ("model", "data", "output_dir")}
        self.set_config(TrainConfig.from_preset(name, **keep))
        self.preset.value = name  # the dropdown names the preset the settings came from

    def _is_preset(self, name):
        """Whether the settings are preset `name`'s (with this form's model, data and output folder)."""
        keep = {k: getattr(self._config, k) for k in ("model", "data", "output_dir")}
        return TrainConfig.from_preset(name, **keep) == self._config

    def _show_preset_help(self):
        name = self.preset.value
        self.preset_help.value = (f'<span style="color:{TEXT["help"]}">{esc(PRESETS[name]["help"])}</span>'
                                  if name in PRESETS else "")

    def save(self, path):
        self.config.save(path)
        self.status.value = message("ok", f"saved {path}")

    def load(self, path):
        self.set_config(TrainConfig.load(path))
        self.preset.value = ""  # settings from a file, not a preset
        self.status.value = message("ok", f"loaded {path}")

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except (OSError, ValueError) as e:
            self.status.value = message("error", str(e))

    # -- estimate --
    def show_estimate(self, tokens_per_epoch=None):
        from ..core.estimate import estimate
        tokens = tokens_per_epoch or self.estimate_tokens or 0
        if callable(tokens):
            tokens = tokens()
        est = estimate(self.config, tokens)
        m = est["memory_gb"]
        parts = ", ".join(f"{k} {m[k]:.2f} GB" for k in ("weights", "gradients", "optimizer", "activations"))
        lines = [f"<b>{esc(est['device'])}</b>: {count(est['params'])} parameters, "
                 f"{count(est['trainable_params'])} trained",
                 f"memory: about {m['total']:.2f} GB ({esc(parts)})"
                 + (f" of {est['available_gb']} GB" if est["available_gb"] else "")]
        if tokens and est["seconds_per_epoch"] is not None:
            lines.append(f"time: about {duration(est['seconds_per_epoch'])} per epoch "
                         f"({tokens:,} tokens at ~{est['tokens_per_s']:,} tokens/s)")
        elif not tokens:
            lines.append(NO_DATA)
        if self.config.probe:
            lines.append("forgetting probe: one pass took 24-31 s on 2 CPU cores for the 135M default model "
                         "(measured; the forgetting panel shows this run's own pass time)")
        html = "<br>".join(lines)
        if not est["fits"]:
            html += message("warn", "this will probably not fit in memory: lower micro_batch_tokens or max_seq_len, "
                                    "use LoRA, or turn on gradient_checkpointing")
        self.estimate_html.value = html
        return est
