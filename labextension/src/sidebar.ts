/**
 * The runs sidebar: one row per run with its state, progress, losses, retention and time, an Open button and,
 * while it runs, a Stop button. Rows are updated in place. Everything from the server is set with textContent or
 * as an attribute value, never parsed as HTML: run folders can come from other people.
 */
import { Widget } from '@lumino/widgets';

import { runsIcon } from './icons';
import { detailParts, DETAILS_SEPARATOR, IRunSummary, percent, stateClass } from './logic';
import { RunsModel } from './model';

export interface ISidebarActions {
  open(run: IRunSummary, root: string): void;
  stop(run: IRunSummary): Promise<void>;
}

interface IRow {
  node: HTMLLIElement;
  name: HTMLElement;
  state: HTMLElement;
  details: HTMLElement;
  bar: HTMLElement;
  error: HTMLElement;
  note: HTMLElement;
  stop: HTMLButtonElement;
  open: HTMLButtonElement;
  run: IRunSummary;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = cls;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export class RunsSidebar extends Widget {
  private _rows = new Map<string, IRow>();
  private _stopping = new Set<string>();
  private _list: HTMLUListElement;
  private _where: HTMLElement;
  private _message: HTMLElement;

  constructor(
    private _model: RunsModel,
    private _actions: ISidebarActions
  ) {
    super();
    this.id = 'ftnb-runs-sidebar';
    this.addClass('ftnb-sidebar');
    this.title.icon = runsIcon;
    this.title.caption = 'Fine-tuning runs';

    const header = el('div', 'ftnb-sidebar-header');
    header.appendChild(el('h2', 'ftnb-sidebar-title', 'Fine-tuning runs'));
    const refresh = el('button', 'jp-Button jp-mod-minimal ftnb-refresh', 'Refresh');
    refresh.title = 'Refresh the list now';
    refresh.addEventListener('click', () => void this._model.refresh());
    header.appendChild(refresh);
    this._where = el('div', 'ftnb-sidebar-where');
    this._message = el('div', 'ftnb-sidebar-message');
    this._list = el('ul', 'ftnb-run-list');
    this.node.append(header, this._where, this._message, this._list);

    this._model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const list = this._model.list;
    const runs = this._model.runs;
    this._where.textContent = list ? `in ${list.root || 'the server root'}` : '';
    if (this._model.error) {
      this._message.textContent = `Cannot list runs: ${this._model.error}`;
    } else if (list && runs.length === 0) {
      this._message.replaceChildren(
        'No runs yet. Runs appear here when a notebook or ',
        el('code', '', 'ftnb train'),
        ' writes a run folder (up to three levels below).'
      );
    } else {
      this._message.textContent = list ? '' : 'Loading…';
    }

    const seen = new Set<string>();
    runs.forEach(run => {
      seen.add(run.path);
      const row = this._rows.get(run.path) ?? this._createRow(run);
      this._updateRow(row, run);
    });
    for (const [path, row] of this._rows) {
      if (!seen.has(path)) {
        row.node.remove();
        this._rows.delete(path);
        this._stopping.delete(path);
      }
    }
    // keep the server's order (newest first); move nodes only when it changed, so a click in progress survives
    const order = runs.map(r => this._rows.get(r.path)!.node);
    const current = Array.from(this._list.children);
    if (order.length !== current.length || order.some((node, i) => node !== current[i])) {
      order.forEach(node => this._list.appendChild(node));
    }
  }

  private _createRow(run: IRunSummary): IRow {
    const node = el('li', 'ftnb-run');
    node.setAttribute('data-path', run.path);
    const head = el('div', 'ftnb-run-head');
    const name = el('span', 'ftnb-run-name');
    const state = el('span', 'ftnb-run-state');
    head.append(name, state);
    const details = el('div', 'ftnb-run-details');
    const track = el('div', 'ftnb-run-progress');
    const bar = el('div', 'ftnb-run-progress-bar');
    track.appendChild(bar);
    const error = el('div', 'ftnb-run-error');
    const note = el('div', 'ftnb-run-note');
    note.hidden = true;
    const actions = el('div', 'ftnb-run-actions');
    const open = el('button', 'jp-Button jp-mod-styled jp-mod-accept ftnb-open', 'Open');
    const stop = el('button', 'jp-Button jp-mod-styled jp-mod-warn ftnb-stop', 'Stop');
    actions.append(open, stop);
    node.append(head, details, track, error, note, actions);

    const row: IRow = { node, name, state, details, bar, error, note, stop, open, run };
    open.addEventListener('click', () => this._actions.open(row.run, this._model.list?.root ?? ''));
    stop.addEventListener('click', () => void this._stop(row));
    this._rows.set(run.path, row);
    return row;
  }

  private _updateRow(row: IRow, run: IRunSummary): void {
    row.run = run;
    const running = run.state === 'running';
    if (!running) {
      this._stopping.delete(run.path);
      row.note.hidden = true;
    }
    row.node.className = `ftnb-run ${stateClass(run.state)}`;
    row.node.title = run.path;
    row.name.textContent = run.name;
    row.state.textContent = this._stopping.has(run.path) ? 'stopping' : run.state ?? 'unknown';
    // each figure in a span that does not wrap (CSS); the text is the same as formatDetails(run)
    const parts = detailParts(run);
    if (row.details.children.length !== parts.length) {
      row.details.replaceChildren(
        ...parts.flatMap((_, i) => {
          const span = el('span', 'ftnb-run-figure');
          return i ? [DETAILS_SEPARATOR, span] : [span];
        })
      );
    }
    (Array.from(row.details.children) as HTMLElement[]).forEach((span, i) => (span.textContent = parts[i]));
    row.bar.style.width = `${percent(run.step, run.total_steps) ?? 0}%`;
    const trouble = run.error ?? (run.warning ? `warning: ${run.warning}` : '');
    row.error.textContent = trouble;
    row.error.hidden = !trouble;
    row.stop.hidden = !running;
    row.stop.disabled = this._stopping.has(run.path);
    row.stop.title = `Ask the process training ${run.name} to stop (it saves a checkpoint first)`;
    row.open.title = 'Open the training monitor on this run in the active notebook';
  }

  private async _stop(row: IRow): Promise<void> {
    const path = row.run.path;
    this._stopping.add(path);
    this._updateRow(row, row.run);
    try {
      await this._actions.stop(row.run);
    } catch (e) {
      this._stopping.delete(path);
      row.note.textContent = `Stop failed: ${e instanceof Error ? e.message : String(e)}`;
      row.note.hidden = false;
      this._updateRow(row, row.run);
    }
    void this._model.refresh();
  }
}
