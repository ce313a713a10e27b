import {
  BURST_MS,
  BURST_REFRESH_MS,
  chooseActiveRun,
  dirname,
  FAST_REFRESH_MS,
  formatDetails,
  formatDuration,
  formatLoss,
  formatProgress,
  formatRetention,
  IRunSummary,
  joinPath,
  newlyRunning,
  openRunCellSource,
  PANEL_CELLS,
  panelCellSource,
  percent,
  pythonString,
  refreshInterval,
  relativePath,
  runPathForKernel,
  runUrlPath,
  SLOW_REFRESH_MS,
  stateClass,
  statusText,
  uniqueNotebookName
} from '../logic';

function run(fields: Partial<IRunSummary>): IRunSummary {
  return {
    path: 'runs/a',
    name: 'a',
    state: 'finished',
    step: 10,
    total_steps: 40,
    loss: 1.5,
    val_loss: null,
    retention: null,
    elapsed_s: 12,
    error: null,
    mtime: 1,
    ...fields
  };
}

describe('refreshInterval', () => {
  it('polls fast while a run is running and slowly otherwise', () => {
    expect(refreshInterval([run({ state: 'running' }), run({})])).toBe(FAST_REFRESH_MS);
    expect(refreshInterval([run({ state: 'stopped' })])).toBe(SLOW_REFRESH_MS);
    expect(refreshInterval([])).toBe(SLOW_REFRESH_MS);
    expect(refreshInterval(null)).toBe(SLOW_REFRESH_MS);
  });

  it('polls every second until the burst ends, whatever runs', () => {
    const now = 1_000_000;
    expect(refreshInterval([], now, now + BURST_MS)).toBe(BURST_REFRESH_MS);
    expect(refreshInterval([run({ state: 'running' })], now, now + 1)).toBe(BURST_REFRESH_MS);
    expect(refreshInterval([run({ state: 'running' })], now + BURST_MS, now + BURST_MS)).toBe(FAST_REFRESH_MS);
    expect(refreshInterval([], now + BURST_MS, now + BURST_MS)).toBe(SLOW_REFRESH_MS);
  });
});

describe('newlyRunning', () => {
  it('finds runs that started since the last listing', () => {
    const a = run({ path: 'a', state: 'running' });
    const b = run({ path: 'b', state: 'finished' });
    expect(newlyRunning([b], [a, b])).toEqual([a]); // a new run folder
    expect(newlyRunning([{ ...a, state: 'stopped' }], [a])).toEqual([a]); // resumed
    expect(newlyRunning([a], [a, b])).toEqual([]); // already running
    expect(newlyRunning(null, [a])).toEqual([]); // the first listing: nothing "just" started
  });
});

describe('chooseActiveRun', () => {
  it('picks the most recently updated running run', () => {
    const runs = [
      run({ path: 'old', state: 'running', mtime: 5 }),
      run({ path: 'done', state: 'finished', mtime: 50 }),
      run({ path: 'new', state: 'running', mtime: 9 })
    ];
    expect(chooseActiveRun(runs)?.path).toBe('new');
  });

  it('returns null when nothing runs', () => {
    expect(chooseActiveRun([run({ state: 'interrupted' })])).toBeNull();
    expect(chooseActiveRun(null)).toBeNull();
  });
});

describe('formatting', () => {
  it('shows progress with a percentage, or the step alone without a total', () => {
    expect(formatProgress(120, 400)).toBe('120/400 (30%)');
    expect(formatProgress(7, null)).toBe('step 7');
    expect(formatProgress(null, 0)).toBe('step 0');
    expect(percent(401, 400)).toBe(100);
    expect(percent(1, 3)).toBe(33);
  });

  it('formats losses, retention and durations', () => {
    expect(formatLoss(1.23456)).toBe('1.235');
    expect(formatLoss(0.0123456)).toBe('0.01235');
    expect(formatLoss('nan')).toBe('nan');
    expect(formatLoss(null)).toBe('–');
    expect(formatRetention(0.985)).toBe('98.5%');
    expect(formatRetention(0.985, 0.931, 1.032)).toBe('98.5% (93.1–103.2%)');
    expect(formatRetention(undefined)).toBe('–');
    expect(formatDuration(45)).toBe('45s');
    expect(formatDuration(185)).toBe('3m 05s');
    expect(formatDuration(7620)).toBe('2h 07m');
    expect(formatDuration(null)).toBe('–');
    expect(formatDuration('inf')).toBe('–');
  });

  it('leaves unknown parts out of the details line', () => {
    expect(formatDetails(run({}))).toBe('10/40 (25%) · loss 1.5 · 12s');
    expect(formatDetails(run({ val_loss: 2, retention: 0.9, elapsed_s: null }))).toBe(
      '10/40 (25%) · loss 1.5 · val 2 · retention 90.0%'
    );
    expect(formatDetails(run({ retention: 0.9, retention_low: 0.85, retention_high: 0.95, elapsed_s: null }))).toBe(
      '10/40 (25%) · loss 1.5 · retention 90.0% (85.0–95.0%)'
    );
    expect(statusText(run({ name: 'demo' }))).toBe('demo 10/40 (25%)');
  });

  it('maps states to a fixed set of classes', () => {
    expect(stateClass('running')).toBe('ftnb-state-running');
    expect(stateClass('x" onclick="y')).toBe('ftnb-state-other');
    expect(stateClass(null)).toBe('ftnb-state-other');
    expect(stateClass('not responding')).toBe('ftnb-state-not-responding');
    expect(stateClass('unreadable')).toBe('ftnb-state-unreadable');
  });
});

describe('uniqueNotebookName', () => {
  it('never reuses a taken name', () => {
    expect(uniqueNotebookName([])).toBe('finetune.ipynb');
    expect(uniqueNotebookName(['finetune.ipynb'])).toBe('finetune-1.ipynb');
    expect(uniqueNotebookName(['finetune.ipynb', 'finetune-1.ipynb', 'finetune-3.ipynb'])).toBe(
      'finetune-2.ipynb'
    );
    expect(uniqueNotebookName(['finetune-1.ipynb'])).toBe('finetune.ipynb');
  });
});

describe('paths', () => {
  it('joins and splits server paths', () => {
    expect(joinPath('', 'a.ipynb')).toBe('a.ipynb');
    expect(joinPath('x/', '/y', 'z')).toBe('x/y/z');
    expect(dirname('a/b/c.ipynb')).toBe('a/b');
    expect(dirname('c.ipynb')).toBe('');
  });

  it('finds a run from the notebook folder', () => {
    expect(relativePath('', 'runs/a')).toBe('runs/a');
    expect(relativePath('notebooks/x', 'runs/a')).toBe('../../runs/a');
    expect(relativePath('runs', 'runs/a')).toBe('a');
    expect(relativePath('runs/a', 'runs/a')).toBe('.');
    expect(runPathForKernel('', 'runs/a', 'nb')).toBe('../runs/a');
    expect(runPathForKernel('work', 'runs/a', 'work')).toBe('runs/a');
    expect(runPathForKernel('/data/shared/', 'runs/a', 'nb')).toBe('/data/shared/runs/a');
  });

  it('encodes each segment of a run URL', () => {
    expect(runUrlPath('runs/<img src=x>')).toBe('runs/%3Cimg%20src%3Dx%3E');
    expect(runUrlPath('a b/c#d?e')).toBe('a%20b/c%23d%3Fe');
  });
});

describe('cell sources', () => {
  it('builds each panel cell', () => {
    expect(panelCellSource('dataset')).toContain('DatasetBuilder.from_source(ftnb.bundled("pizza_demo.jsonl"))');
    expect(panelCellSource('config')).toContain('ConfigForm(preset="quick-cpu-demo")');
    expect(panelCellSource('monitor')).toContain('TrainingMonitor(form=form, builder=builder)');
    expect(panelCellSource('forgetting')).toContain('ForgettingPanel(monitor)');
    expect(panelCellSource('comparison')).toContain('RunComparison("runs")');
    expect(Object.keys(PANEL_CELLS)).toHaveLength(5);
  });

  it('quotes any run path as a Python string', () => {
    expect(openRunCellSource('runs/a')).toBe(
      'import ftnb.panels\n\nftnb.panels.TrainingMonitor.open("runs/a")'
    );
    expect(pythonString('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
    expect(openRunCellSource('x")\nimport os')).toContain('open("x\\")\\nimport os")');
  });
});
