"""The dataset builder: load examples (file, upload, Python object, Hub name), see how they were read, page through
them, edit them turn by turn, see the validation report, the rendered template with the trained tokens highlighted,
the token-length histogram and the train/validation split. With autosave=, every edit is saved at once to that
JSONL file. Examples with tools, tool calls or turn weights are shown read-only in the editor (in code,
update_example keeps their tools)."""
import copy
import warnings
from pathlib import Path

import ipywidgets as w
import plotly.graph_objects as go

from ..core.batching import chat_segments, tokenize_data, tokenize_example
from ..core.data import ChatData, DataReport, load_examples, load_examples_from_bytes, peek_columns
from ..core.errors import RowProblem
from ..core.formats import FORMAT_COLUMNS, FORMAT_NAMES, normalise, resolve_format
from ..core.function_calling import fallback_messages, supports_tools, uses_tools
from ..core.durable import write_text
from ..core.errors import DataError
from .form import ConfigForm
from ._common import SELECTED_ROW, TEXT, LiveChart, Panel, esc, full_width, message, plural, styled

PAGE = 10
SPLIT_FIELDS = ("val_fraction", "seed", "val_data")  # the form's settings the split preview follows


def detected_columns(columns, fmt):
    """{role: column} the way `fmt` reads a source with these columns (what the mapping shows before any choice)."""
    try:
        _, cols, _ = resolve_format(columns, fmt)
    except DataError:
        return {}
    return {role: col for role, col in cols.items() if col in columns}


class DatasetBuilder(Panel):
    """builder = DatasetBuilder.from_source("faq.jsonl"); builder.dataset -> ChatData of the current examples.

    Edits are kept in memory; with `autosave="my-data.jsonl"` every change is also written to that one file (its
    working copy), and a builder made again with the same autosave file (a re-run cell, a new kernel) restores it
    rather than reading the source again. No file is written unless asked."""

    def __init__(self, examples=None, source="new dataset", autosave=None, tokenizer=None, model="default", form=None):
        """`form`: the ConfigForm whose val_fraction and seed the split preview shows and edits, and whose
        max_seq_len, overlong and train_on the length check uses (None: a form of the builder's own, with
        TrainConfig's defaults; `builder.form = form` links one later)."""
        self.autosave_path = Path(autosave) if autosave else None
        self.tokenizer, self.model_name = tokenizer, model
        self._form = self._own_form = None
        self._split_views, self._lengths = [], {}
        self.report = DataReport(source)
        self.examples = list(examples or [])
        self.restored = False
        self.failure = None  # the DataError of the last load, with the columns the file has
        self.columns_found = []
        if not self.examples and self.autosave_path and self.autosave_path.exists():
            restored = load_examples(self.autosave_path)
            self.examples, self.report, self.restored = restored.examples, restored.report, True
            self.report.source = f"{self.autosave_path} (restored)"
        self.selected = 0
        self.page = 0
        self._build()
        self.form = form
        self._refresh()
        if self.examples and not self.restored:
            self._save()

    @classmethod
    def from_source(cls, source, data_format="auto", columns=None, **kw):
        """A builder on `source`; when its autosave file exists (the cell ran before), that working copy, with the
        edits made to it, is restored instead and the source is not read again (Load reads it on request)."""
        b = cls(**kw)
        b._source = (source, data_format)
        if b.restored:
            b.status.value = message("info", f"restored {plural(len(b.examples), 'example')} from "
                                             f"{b.autosave_path} (your edits); {source} was not read again: Load it "
                                             "to start over from it, or choose another autosave file")
            return b
        try:
            b.load(source, data_format, columns)
        except DataError as e:  # shown in the panel, which offers a column mapping: the cell still draws it
            warnings.warn(f"ftnb: {e}", stacklevel=2)
        return b

    @property
    def form(self):
        return self._form

    @form.setter
    def form(self, form):
        """Show `form`'s val_fraction and seed (views of its fields: one value, its validation) and split with them."""
        self._unbind()
        if self._own_form is not None and form is not self._own_form:
            self._own_form.close()
            self._own_form = None
        if form is None:
            form = self._own_form = ConfigForm()
        self._form = form
        self._split_views = [form.field_view(name) for name in ("val_fraction", "seed")]
        self.val_fraction, self.seed = (view.widget for view in self._split_views)
        self.split_box.children = [w.VBox([view.widget, view.error]) for view in self._split_views]
        for name in SPLIT_FIELDS:
            form.fields[name].observe(self._split_setting_changed, names="value")
        self._draw_split()

    # -- plain functions (the buttons call these) --
    @property
    def dataset(self):
        """The current examples as ChatData (what the monitor trains on)."""
        return ChatData(list(self.examples), self.report)

    def load(self, source, data_format="auto", columns=None):
        """Read `source` (replacing the examples shown, and the autosave file's content). When its format cannot be
        told, the error is shown with a column mapping to choose, and raised."""
        self._source = (source, data_format)
        try:
            data = load_examples(source, data_format, columns)
        except DataError as e:
            self._failed(e, peek_columns(source))
            raise
        return self._loaded(data)

    def load_upload(self, name, content):
        suffix = Path(name).suffix.lower()
        self._source = (None, "auto")
        try:
            data = load_examples_from_bytes(bytes(content), suffix, name)
        except DataError as e:
            self._failed(e, [])
            raise
        return self._loaded(data)

    def check(self, max_seq_len=None, overlong=None, train_on=None):
        """The report with the rows measured by the model's tokenizer: which are longer than max_seq_len and what
        happens to them (as training would do; defaults from the form)."""
        settings = self.form.values()
        report = copy.deepcopy(self.report)
        tokenize_data(ChatData(list(self.examples), report), self._tok(), max_seq_len or settings["max_seq_len"],
                      train_on or settings["train_on"], overlong or settings["overlong"])
        self._draw_report(report)
        return report

    def add_example(self, messages, tools=None):
        ex = self._check(messages, tools)
        ex.row = len(self.examples) + 1
        self.examples.append(ex)
        self.selected = len(self.examples) - 1
        self._save()
        self._refresh()
        return self.selected

    def update_example(self, i, messages, tools=None):
        """Replace example i's messages; `tools` replaces its tool list ([] removes it), None keeps it."""
        ex = self._check(messages, self.examples[i].tools if tools is None else tools)
        ex.row = self.examples[i].row
        self.examples[i] = ex
        self._save()
        self._refresh()

    def delete_example(self, i):
        del self.examples[i]
        self.selected = min(self.selected, max(0, len(self.examples) - 1))
        self._save()
        self._refresh()

    def split(self, val_fraction=None, seed=None):
        """(train, val) as training splits them when there is no val_data: with the form's val_fraction and seed
        unless given."""
        settings = self.form.values()
        return self.dataset.split(settings["val_fraction"] if val_fraction is None else val_fraction,
                                  settings["seed"] if seed is None else seed)

    def token_count(self):
        """Tokens of one epoch: the training side of the split, measured with the model's tokenizer (each example
        measured once; the form's estimate asks for it in the Studio)."""
        tok = self._tok()
        if self._lengths.get("tokenizer") is not tok:
            self._lengths = {"tokenizer": tok}
        total = 0
        for ex in self.split()[0].examples:
            if id(ex) not in self._lengths:  # the example is kept beside its length, so its id is not reused
                self._lengths[id(ex)] = (ex, len(tokenize_example(tok, ex, 10 ** 9)))
            total += self._lengths[id(ex)][1]
        return total

    def _check(self, messages, tools=None):
        try:
            return normalise({"messages": messages, "tools": tools}, "messages", {"messages": "messages"})
        except RowProblem as p:
            raise DataError(p.reason, field=p.field) from None

    def _save(self):
        if self.autosave_path:
            self.autosave_path.parent.mkdir(parents=True, exist_ok=True)
            write_text(self.autosave_path, ChatData(self.examples, self.report).to_jsonl())

    def _tok(self):
        if self.tokenizer is None:
            from ..core.models import load_tokenizer, resolve_model
            self.tokenizer = load_tokenizer(resolve_model(self.model_name))
        return self.tokenizer

    def render_html(self, i):
        """The example as the model sees it: the chat template, with the tokens trained on highlighted."""
        ex = self.examples[i]
        tok = self._tok()
        if ex.text is not None:
            return f'<pre style="white-space:pre-wrap"><mark>{esc(ex.text)}</mark></pre>'
        parts = [f'<mark style="background:rgba(76,175,80,0.35);color:inherit">{esc(t)}</mark>' if trained else esc(t)
                 for t, trained in chat_segments(tok, ex.messages, ex.tools)]
        n = len(tokenize_example(tok, ex, 10 ** 9))
        how = ""
        if uses_tools(ex.messages, ex.tools):
            how = ("; tools in the chat template's own format" if supports_tools(tok, ex.tools) else
                   "; tools in ftnb's fallback format (the chat template has no tool support)")
        return (f'<div style="font-size:0.85em;color:{TEXT["help"]}">{n} tokens; highlighted: trained on{how}</div>'
                f'<pre style="white-space:pre-wrap;font-size:0.85em">{"".join(parts)}</pre>')

    def token_lengths(self):
        tok = self._tok()
        return [len(tokenize_example(tok, ex, 10 ** 9)) for ex in self.examples]

    # -- view --
    def _build(self):
        self.upload = w.FileUpload(accept=".jsonl,.json,.csv,.tsv,.parquet", multiple=False, description="Upload")
        self.upload.observe(self._on_upload, names="value")
        self.hub_name = w.Text(placeholder="file path or Hub dataset (name or name:split)", layout=w.Layout(width="380px"))
        self.load_button = w.Button(description="Load", icon="download")
        self.load_button.on_click(lambda _: self._guard(self.load, self.hub_name.value.strip()))
        self.format_html = w.HTML()
        self.mapping = {}
        self.mapping_box = w.HBox()
        self.format_choice = w.Dropdown(options=["auto", *FORMAT_COLUMNS], description="format")
        self.remap_button = w.Button(description="Re-read with mapping", icon="refresh", layout=w.Layout(width="auto"))
        self.remap_button.on_click(lambda _: self._guard(self._remap))
        self.format_choice.observe(self._draw_mapping, names="value")
        self.status = w.HTML()
        self.check_button = w.Button(description="Check lengths", icon="ruler-horizontal", layout=w.Layout(width="auto"),
                                     tooltip="measure every example with the model's tokenizer against max_seq_len")
        self.check_button.on_click(lambda _: self._guard(self.check))
        self.table = w.HTML()
        self.prev_button, self.next_button = w.Button(icon="arrow-left"), w.Button(icon="arrow-right")
        self.prev_button.on_click(lambda _: self._goto_page(self.page - 1))
        self.next_button.on_click(lambda _: self._goto_page(self.page + 1))
        self.page_label = w.Label()
        self.pick = w.BoundedIntText(min=1, max=1, description="example #")
        self.pick.observe(lambda ch: self._select(ch["new"] - 1), names="value")
        self.turns = w.VBox()
        self.add_turn_button = w.Button(description="Add turn", icon="plus")
        self.add_turn_button.on_click(lambda _: self._add_turn_row())
        self.save_button = w.Button(description="Save example", icon="save", button_style="primary")
        self.save_button.on_click(lambda _: self._guard(self._save_editor))
        self.new_button = w.Button(description="New example", icon="file")
        self.new_button.on_click(lambda _: self._new_editor())
        self.delete_button = w.Button(description="Delete example", icon="trash", button_style="danger")
        self.delete_button.on_click(lambda _: self._guard(self.delete_example, self.selected) if self.examples else None)
        self.editing = None  # index being edited, None for a new example
        self.read_only = False
        self.editor_msg = w.HTML()
        self.report_html = w.HTML()
        self.template_html = w.HTML()
        self.show_template = w.Button(description="Show template and tokens", icon="eye", layout=w.Layout(width="auto"))
        self.show_template.on_click(lambda _: self._guard(self._draw_tokens))
        self.hist = None  # built on first use: each plotly FigureWidget ships its own copy of plotly.js
        self.hist_box = w.VBox(layout=full_width())  # a column: the chart takes its width
        self.split_box = w.HBox(layout=w.Layout(flex_flow="row wrap"))  # the form's val_fraction and seed (form=)
        self.split_html = w.HTML()
        self.root = w.VBox([
            w.HBox([self.upload, self.hub_name, self.load_button]), self.status, self.format_html,
            w.HBox([self.format_choice, self.remap_button]), self.mapping_box,
            self.table, w.HBox([self.prev_button, self.page_label, self.next_button, self.pick]),
            w.HTML("<b>Edit</b>"), self.turns, w.HBox([self.add_turn_button, self.save_button, self.new_button,
                                                       self.delete_button]), self.editor_msg,
            w.HTML("<b>Report</b>"), self.report_html, self.check_button,
            w.HBox([self.show_template]), self.template_html, self.hist_box,
            self.split_box, self.split_html],
            layout=full_width())

    def _guard(self, fn, *args):
        self.editor_msg.value = self.status.value = ""
        try:
            fn(*args)
        except (DataError, OSError, ValueError) as e:
            self.editor_msg.value = message("error", str(e))

    def _on_upload(self, change):
        files = change["new"]
        if isinstance(files, dict):  # ipywidgets 7 (Colab): {name: {"content": bytes, "metadata": ...}}
            files = [{"name": k, "content": v["content"]} for k, v in files.items()]
        if files:
            f = files[0]
            self._guard(self.load_upload, f["name"], f["content"])

    def _remap(self):
        cols = {role: dd.value for role, dd in self.mapping.items() if dd.value}
        fmt = self.format_choice.value
        source = getattr(self, "_source", (None, None))[0]
        if source is None:
            raise DataError("load a file or object first (an upload: save it as a file); the mapping re-reads it")
        self.load(source, fmt, cols or None)

    def _loaded(self, data):
        self.examples, self.report, self.failure = data.examples, data.report, None
        self.columns_found = list(data.report.columns)
        self.selected, self.page = 0, 0
        self._save()
        self._refresh()
        return data

    def _failed(self, error, columns):
        """A load that failed: the examples shown before stay, the error says why, and the mapping offers the
        columns the file has."""
        self.failure, self.columns_found = error, list(columns)
        self._draw_mapping()
        self.format_html.value = message("error", f"could not read it: {error.message}")
        self.report_html.value = message("error", "nothing was loaded" + (
            ": choose which column is which below, then Re-read with mapping" if columns else ""))

    def _draw_mapping(self, *_):
        fmt = self.format_choice.value if self.format_choice.value != "auto" else (
            self.report.format if self.failure is None and self.report.format in FORMAT_COLUMNS
            else "prompt_completion")
        chosen = detected_columns(self.columns_found, fmt)
        self.mapping = {role: w.Dropdown(options=[""] + self.columns_found, value=chosen.get(role, ""),
                                         description=role, layout=w.Layout(width="220px"))
                        for role in FORMAT_COLUMNS[fmt]} if self.columns_found else {}
        self.mapping_box.children = list(self.mapping.values())

    def _refresh(self):
        n = len(self.examples)
        r = self.report
        self.format_html.value = (f"<b>{esc(r.source)}</b>: {esc(FORMAT_NAMES.get(r.format, r.format))}"
                                  + (f" ({esc(r.detected)})" if r.detected else "") + f", {plural(n, 'example')}"
                                  + (f" &middot; autosaved to <code>{esc(self.autosave_path)}</code>"
                                     if self.autosave_path else ""))
        self.columns_found = list(r.columns)
        self._draw_mapping()
        self.pick.max = max(1, n)
        self._draw_table()
        self._draw_report()
        self._draw_split()
        if n:
            self._select(min(self.selected, n - 1))
        else:
            self._new_editor()

    def _goto_page(self, page):
        pages = max(1, -(-len(self.examples) // PAGE))
        self.page = max(0, min(page, pages - 1))
        self._draw_table()

    def _draw_table(self):
        pages = max(1, -(-len(self.examples) // PAGE))
        self.page = min(self.page, pages - 1)
        rows = []
        for i in range(self.page * PAGE, min(len(self.examples), (self.page + 1) * PAGE)):
            ex = self.examples[i]
            if ex.messages:
                shown = fallback_messages(ex.messages)  # tool calls as text
                user = next((m["content"] for m in shown if m["role"] == "user"), "")
                answer = next((m["content"] for m in shown if m["role"] == "assistant"), "")
                turns = len(ex.messages)
            else:
                user, answer, turns = ex.text, "", 1
            style = f' class="ftnb-selected" style="background:{SELECTED_ROW}"' if i == self.selected else ""
            rows.append(f"<tr{style}><td>{i + 1}</td><td>{esc(user[:140])}</td><td>{esc(answer[:140])}</td>"
                        f"<td>{turns}</td></tr>")
        self.table.value = ('<table style="width:100%;font-size:0.9em"><tr><th>#</th><th>user</th><th>assistant</th>'
                            f'<th>turns</th></tr>{"".join(rows)}</table>')
        self.page_label.value = f"page {self.page + 1} of {pages}"

    def _draw_report(self, report=None):
        """The data report, as `ftnb data` prints it (`report`: one with the lengths checked)."""
        r = report or self.report
        trouble = r.bad or r.overlong or r.duplicates or r.mojibake or r.ignored_columns or r.notes
        if not r.rows and not self.examples:
            self.report_html.value = message("info", "no data loaded yet")
            return
        head = message("warn" if trouble else "ok", f"{r.usable} of {r.rows} rows usable" if r.rows else
                       f"{plural(len(self.examples), 'example')} entered here")
        checked = "" if report is not None else (f"<div style='font-size:0.85em;color:{TEXT['help']}'>"
                                                 "lengths not checked yet: "
                                                 "Check lengths measures them with the model's tokenizer</div>")
        self.report_html.value = (head + f'<pre style="max-height:220px;overflow:auto;font-size:0.85em;'
                                  f'white-space:pre-wrap">{esc(r.render(limit=200))}</pre>' + checked)

    def _split_setting_changed(self, _change):
        self._draw_split()

    def _draw_split(self):
        error = self.form.error
        if not self.examples or (error is not None and error.field in SPLIT_FIELDS):  # the view shows the message
            self.split_html.value = ""
            return
        val_data = self.form.values()["val_data"]
        if val_data:
            self.split_html.value = (f"{plural(len(self.examples), 'training example')}; validation examples from "
                                     f"{esc(val_data)} (val_data)")
            return
        train, val = self.split()
        self.split_html.value = f"{plural(len(train), 'training example')}, {plural(len(val), 'validation example')}"

    def _unbind(self):
        for view in self._split_views:
            view.close()
        if self._split_views:
            for name in SPLIT_FIELDS:
                self._form.fields[name].unobserve(self._split_setting_changed, names="value")
        self._split_views = []

    def close(self):
        self._unbind()
        if self._own_form is not None:
            self._own_form.close()
        super().close()

    def _draw_tokens(self):
        if not self.examples:
            return
        self.template_html.value = self.render_html(self.selected)
        import numpy as np
        if self.hist is None:
            self.hist = LiveChart(styled(go.Figure(data=[go.Histogram(x=[], nbinsx=30, name="tokens")],
                                                   layout={"title": "tokens per example"}), height=240))
            self.hist_box.children = [self.hist.widget]
        self.hist.update({0: {"x": np.array(self.token_lengths())}}, force=True)

    def _select(self, i):
        if not (0 <= i < len(self.examples)):
            return
        self.selected = i
        self.page = i // PAGE
        self._draw_table()
        ex = self.examples[i]
        self.editing = i
        msgs = ex.messages or [{"role": "user", "content": ex.text or ""}]
        self._read_only(bool(ex.tools) or any(set(m) != {"role", "content"} for m in msgs))
        if self.read_only:
            self.turns.children = [self._shown_row(m) for m in fallback_messages(msgs)]
        else:
            self.turns.children = [self._turn_row(m["role"], m["content"]) for m in msgs]
        if self.pick.value != i + 1:
            self.pick.value = i + 1

    def _turn_row(self, role="user", content=""):
        r = w.Dropdown(options=["system", "user", "assistant"], value=role, layout=w.Layout(width="110px"))
        c = w.Textarea(value=content, layout=w.Layout(width="560px", height="60px", min_width="0", flex="0 1 560px"))
        remove = w.Button(icon="times", layout=w.Layout(width="36px"))
        row = w.HBox([r, c, remove])
        remove.on_click(lambda _: setattr(self.turns, "children", [x for x in self.turns.children if x is not row]))
        return row

    def _read_only(self, read_only):
        """Examples with tools, tool calls or turn weights are shown, not edited: the turn editor has no place for
        them, and saving would drop them."""
        if read_only:
            self.editor_msg.value = message("info", "This example has tools, tool calls or turn weights: shown "
                                                    "read-only (calls as <tool_call> text). Edit it in its file, or in "
                                                    "code with builder.update_example(i, messages), which keeps its tools.")
        elif self.read_only:
            self.editor_msg.value = ""
        self.read_only = read_only
        self.add_turn_button.disabled = self.save_button.disabled = read_only

    def _shown_row(self, m):
        role = m["role"] + (" (weight 0)" if m.get("weight") == 0 else "")
        return w.HBox([w.Label(role, layout=w.Layout(width="110px")),
                       w.Textarea(value=m["content"], disabled=True,
                                  layout=w.Layout(width="560px", height="60px", min_width="0", flex="0 1 560px"))])

    def _add_turn_row(self):
        last = self.turns.children[-1].children[0].value if self.turns.children else "assistant"
        self.turns.children = list(self.turns.children) + [self._turn_row("assistant" if last == "user" else "user")]

    def editor_messages(self):
        return [{"role": row.children[0].value, "content": row.children[1].value} for row in self.turns.children]

    def _new_editor(self):
        self.editing = None
        self._read_only(False)
        self.turns.children = [self._turn_row("user"), self._turn_row("assistant")]

    def _save_editor(self):
        if self.read_only:
            raise DataError("this example is shown read-only (it has tools, tool calls or turn weights)")
        msgs = self.editor_messages()
        if self.editing is None:
            self.add_example(msgs)
        else:
            self.update_example(self.editing, msgs)
        self.editor_msg.value = message("ok", "saved")

