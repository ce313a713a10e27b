/**
 * Pure functions behind the extension: formatting, choosing the active run, refresh timing, notebook names and
 * cell sources. Nothing here touches the DOM or JupyterLab, so it is tested with plain Jest.
 */

/** A number, or a string the server sends for NaN and infinities ("nan", "inf"), or null when unknown. */
export type Measure = number | string | null | undefined;

/** One run as `GET /ftnb/runs` reports it (ftnb.core.rundir.summarize, with `path` relative to the runs root). */
export interface IRunSummary {
  path: string;
  name: string;
  state: string | null;
  step: number | null;
  total_steps: number | null;
  loss: Measure;
  val_loss: Measure;
  retention: Measure;
  /** The paired 95% interval of retention (ftnb.core.paired), and the probe's verdict in words. */
  retention_low?: Measure;
  retention_high?: Measure;
  verdict?: string | null;
  /** A collapse seen while training (status.json's "warning"). */
  warning?: string | null;
  elapsed_s: Measure;
  error: string | null;
  mtime: number | null;
}

export interface IRunList {
  /** The runs root: '' (the server root), a path relative to the server root, or an absolute path. */
  root: string;
  runs: IRunSummary[];
}

/** Every second for BURST_MS after a run starts or Refresh is pressed (a new run shows up at once). */
export const BURST_REFRESH_MS = 1000;
export const BURST_MS = 30000;
/** Every 2 s while a run is running, every 10 s otherwise. */
export const FAST_REFRESH_MS = 2000;
export const SLOW_REFRESH_MS = 10000;
/** Failed polls back off (lumino's Poll: up to 3x the last wait each time) to at most this. */
export const MAX_BACKOFF_MS = 60000;

/** The wait before the next poll: every second in a burst (until `burstUntil`), 2 s while a run trains, else 10 s. */
export function refreshInterval(runs: IRunSummary[] | null, now = 0, burstUntil = 0): number {
  if (now < burstUntil) {
    return BURST_REFRESH_MS;
  }
  return runs && runs.some(r => r.state === 'running') ? FAST_REFRESH_MS : SLOW_REFRESH_MS;
}

/** Runs running in `after` that were not running in `before` (a run just started); none on the first listing. */
export function newlyRunning(before: IRunSummary[] | null, after: IRunSummary[]): IRunSummary[] {
  if (before === null) {
    return [];
  }
  const running = new Set(before.filter(r => r.state === 'running').map(r => r.path));
  return after.filter(r => r.state === 'running' && !running.has(r.path));
}

/** The most recently updated running run, or null when nothing runs. */
export function chooseActiveRun(runs: IRunSummary[] | null): IRunSummary | null {
  let best: IRunSummary | null = null;
  for (const r of runs ?? []) {
    if (r.state === 'running' && (best === null || (r.mtime ?? 0) > (best.mtime ?? 0))) {
      best = r;
    }
  }
  return best;
}

/** Whole percent done (0-100), or null without a known total. */
export function percent(step: number | null, total: number | null): number | null {
  if (!total || total <= 0 || step === null || step === undefined) {
    return null;
  }
  return Math.max(0, Math.min(100, Math.floor((100 * step) / total)));
}

/** "120/400 (30%)", or "step 120" when the total is unknown. */
export function formatProgress(step: number | null, total: number | null): string {
  const s = step ?? 0;
  const p = percent(s, total);
  return p === null ? `step ${s}` : `${s}/${total} (${p}%)`;
}

/** A loss with four significant digits ("1.234", "0.01234"); "–" when unknown. */
export function formatLoss(v: Measure): string {
  if (typeof v === 'number') {
    return Number.isFinite(v) ? String(Number(v.toPrecision(4))) : String(v);
  }
  return v ?? '–';
}

/**
 * Retention (probe accuracy relative to the base model) as a percentage with its paired 95% interval,
 * "98.5% (93.1–103.2%)"; the interval is left out only for runs whose probe recorded none.
 */
export function formatRetention(v: Measure, low?: Measure, high?: Measure): string {
  if (typeof v !== 'number') {
    return v ?? '–';
  }
  const pct = (x: number) => `${(100 * x).toFixed(1)}`;
  if (typeof low === 'number' && typeof high === 'number') {
    return `${pct(v)}% (${pct(low)}–${pct(high)}%)`;
  }
  return `${pct(v)}%`;
}

/** "45s", "3m 05s", "2h 07m". */
export function formatDuration(seconds: Measure): string {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) {
    return '–';
  }
  const s = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  }
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

/**
 * The figures under a run's name: progress, losses, retention, elapsed time (parts that are unknown are left out).
 * The sidebar keeps each one on one line ("val 1.23" never wraps between the word and its number).
 */
export function detailParts(run: IRunSummary): string[] {
  const parts = [formatProgress(run.step, run.total_steps)];
  if (run.loss !== null && run.loss !== undefined) {
    parts.push(`loss ${formatLoss(run.loss)}`);
  }
  if (run.val_loss !== null && run.val_loss !== undefined) {
    parts.push(`val ${formatLoss(run.val_loss)}`);
  }
  if (run.retention !== null && run.retention !== undefined) {
    parts.push(`retention ${formatRetention(run.retention, run.retention_low, run.retention_high)}`);
  }
  if (run.elapsed_s !== null && run.elapsed_s !== undefined) {
    parts.push(formatDuration(run.elapsed_s));
  }
  return parts;
}

export const DETAILS_SEPARATOR = ' · ';

/** One line under a run's name: its detailParts joined. */
export function formatDetails(run: IRunSummary): string {
  return detailParts(run).join(DETAILS_SEPARATOR);
}

/** The status bar text for the active run. */
export function statusText(run: IRunSummary): string {
  return `${run.name} ${formatProgress(run.step, run.total_steps)}`;
}

const KNOWN_STATES = ['running', 'finished', 'stopped', 'failed', 'interrupted', 'not responding', 'unreadable'];

/** A CSS class for a state; states the server may invent later map to one class, never into the class list. */
export function stateClass(state: string | null): string {
  const known = KNOWN_STATES.includes(state ?? '') ? (state as string) : 'other';
  return `ftnb-state-${known.replace(/ /g, '-')}`;
}

/** `finetune.ipynb`, or `finetune-1.ipynb`, `finetune-2.ipynb`, ... : the first name not in `existing`. */
export function uniqueNotebookName(existing: Iterable<string>, base = 'finetune', ext = '.ipynb'): string {
  const taken = new Set(existing);
  let name = `${base}${ext}`;
  for (let i = 1; taken.has(name); i++) {
    name = `${base}-${i}${ext}`;
  }
  return name;
}

/** Join server paths ('' is the server root). */
export function joinPath(...parts: string[]): string {
  return parts
    .flatMap(p => p.split('/'))
    .filter(p => p !== '' && p !== '.')
    .join('/');
}

/** The folder of a server path ('' for a file at the root). */
export function dirname(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

/** The path of `to` as seen from folder `from`; both relative to the server root. */
export function relativePath(from: string, to: string): string {
  const a = joinPath(from).split('/').filter(Boolean);
  const b = joinPath(to).split('/').filter(Boolean);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) {
    i++;
  }
  const rel = [...a.slice(i).map(() => '..'), ...b.slice(i)].join('/');
  return rel || '.';
}

/**
 * The path a kernel running a notebook in `notebookDir` opens a run with: relative to that folder when the runs
 * root is inside the server root (`root` relative, '' for the server root itself), else absolute.
 */
export function runPathForKernel(root: string, runPath: string, notebookDir: string): string {
  if (root.startsWith('/')) {
    return `${root.replace(/\/+$/, '')}/${runPath}`;
  }
  return relativePath(notebookDir, joinPath(root, runPath));
}

/** The URL path of a run under /ftnb/runs/: each segment percent-encoded. */
export function runUrlPath(path: string): string {
  return path.split('/').map(encodeURIComponent).join('/');
}

/** A Python string literal for any text (JSON string syntax is valid Python). */
export function pythonString(text: string): string {
  return JSON.stringify(text);
}

export type PanelKind = 'dataset' | 'config' | 'monitor' | 'forgetting' | 'comparison';

/** The panel cells the insert commands add: label and source. */
export const PANEL_CELLS: Record<PanelKind, { label: string; source: string }> = {
  dataset: {
    label: 'Insert dataset builder cell',
    source: [
      'import ftnb',
      'from ftnb.panels import DatasetBuilder',
      '',
      'builder = DatasetBuilder.from_source(ftnb.bundled("pizza_demo.jsonl"))',
      'builder'
    ].join('\n')
  },
  config: {
    label: 'Insert config form cell',
    source: [
      'from ftnb.panels import ConfigForm',
      '',
      'form = ConfigForm(preset="quick-cpu-demo")',
      'form'
    ].join('\n')
  },
  monitor: {
    label: 'Insert training monitor cell',
    source: [
      'from ftnb.panels import TrainingMonitor',
      '',
      'monitor = TrainingMonitor(form=form, builder=builder)',
      'monitor'
    ].join('\n')
  },
  forgetting: {
    label: 'Insert forgetting probe cell',
    source: ['from ftnb.panels import ForgettingPanel', '', 'probe = ForgettingPanel(monitor)', 'probe'].join(
      '\n'
    )
  },
  comparison: {
    label: 'Insert run comparison cell',
    source: ['from ftnb.panels import RunComparison', '', 'RunComparison("runs")'].join('\n')
  }
};

export function panelCellSource(kind: PanelKind): string {
  return PANEL_CELLS[kind].source;
}

/** The cell that opens the training monitor on an existing run. */
export function openRunCellSource(path: string): string {
  return `import ftnb.panels\n\nftnb.panels.TrainingMonitor.open(${pythonString(path)})`;
}
