/**
 * The runs poller's schedule (src/model.ts, a lumino Poll) on fake timers: fast after Refresh and after a run
 * starts, 2 s while a run is running, 10 s idle, backing off when the server fails, standing by while hidden.
 */
import type { RunsModel as Model } from '../model';
import { BURST_MS, FAST_REFRESH_MS, IRunList, IRunSummary, MAX_BACKOFF_MS, SLOW_REFRESH_MS } from '../logic';

jest.mock('../api', () => ({ listRuns: jest.fn() })); // the model is given its fetch; keep @jupyterlab/services out

// lumino's Poll reads the page's visibility when it is loaded: give it a document it can listen to first
const listeners: Record<string, () => void> = {};
const page = {
  visibilityState: 'visible',
  addEventListener: (type: string, f: () => void) => (listeners[type] = f)
};
(globalThis as any).document = page;
const { RunsModel } = jest.requireActual('../model') as { RunsModel: typeof Model };

function summary(path: string, state: string): IRunSummary {
  return {
    path, name: path, state, step: 1, total_steps: 10, loss: 1, val_loss: null, retention: null, elapsed_s: 1,
    error: null, mtime: 1
  };
}

/** A fake server: its answer can be changed or made to fail; it records when it was asked (ms since the start). */
class Server {
  runs: IRunSummary[] = [];
  failing = false;
  calls: number[] = [];
  constructor(private t0: number) {}
  fetch = async (): Promise<IRunList> => {
    this.calls.push(Date.now() - this.t0);
    if (this.failing) {
      throw new Error('server down');
    }
    return { root: '', runs: this.runs.map(r => ({ ...r })) };
  };
  /** The gaps between calls made after `since` ms. */
  gapsAfter(since: number): number[] {
    const c = this.calls.filter(t => t >= since);
    return c.slice(1).map((t, i) => t - c[i]);
  }
}

let server: Server;
let model: Model;
const t = async (ms: number) => jest.advanceTimersByTimeAsync(ms);

beforeEach(() => {
  jest.useFakeTimers();
  jest.setSystemTime(1_000_000);
  server = new Server(Date.now());
  model = new RunsModel(server.fetch);
});

afterEach(() => {
  model.dispose();
  jest.useRealTimers();
});

describe('RunsModel polling', () => {
  it('polls every 10 s when idle', async () => {
    void model.start();
    await t(35_000);
    expect(server.calls).toEqual([0, 10_000, 20_000, 30_000]);
    expect(model.interval).toBe(SLOW_REFRESH_MS);
  });

  it('polls every 2 s while a run is running that was running when the page opened', async () => {
    server.runs = [summary('old', 'running')];
    void model.start();
    await t(7_000);
    expect(server.calls).toEqual([0, 2_000, 4_000, 6_000]);
    expect(model.activeRun?.path).toBe('old');
  });

  it('polls every second for 30 s after Refresh, then at its normal pace', async () => {
    void model.start();
    await t(3_000);
    void model.refresh();
    await t(0);
    expect(server.calls).toEqual([0, 3_000]); // at once
    await t(BURST_MS + 10_000);
    const gaps = server.gapsAfter(3_000);
    expect(gaps.slice(0, 29)).toEqual(Array(29).fill(1000));
    expect(gaps[gaps.length - 1]).toBe(SLOW_REFRESH_MS);
    expect(model.interval).toBe(SLOW_REFRESH_MS);
  });

  it('polls every second for 30 s after a run starts, then every 2 s while it runs', async () => {
    void model.start();
    await t(5_000);
    server.runs = [summary('new', 'running')];
    await t(5_000); // the 10 s poll finds it
    expect(model.interval).toBe(1000);
    await t(BURST_MS + 6_000);
    const gaps = server.gapsAfter(10_000);
    expect(gaps.slice(0, 29)).toEqual(Array(29).fill(1000));
    expect(gaps.slice(-2)).toEqual([FAST_REFRESH_MS, FAST_REFRESH_MS]);
    server.runs = [summary('new', 'finished')];
    await t(2_000);
    expect(model.interval).toBe(SLOW_REFRESH_MS);
    expect(model.activeRun).toBeNull();
  });

  it('backs off while the server fails, up to a minute, and recovers', async () => {
    jest.spyOn(Math, 'random').mockReturnValue(0.5); // the Poll draws each wait between the interval and 3x the last
    server.failing = true;
    void model.start();
    await t(10 * 60_000);
    const gaps = server.gapsAfter(0);
    expect(model.error).toBe('server down');
    expect(gaps.slice(0, 6)).toEqual([5_000, 12_500, 23_750, 40_625, MAX_BACKOFF_MS, MAX_BACKOFF_MS]);
    expect(new Set(gaps.slice(4))).toEqual(new Set([MAX_BACKOFF_MS]));
    server.failing = false;
    const n = server.calls.length;
    await t(MAX_BACKOFF_MS + 25_000);
    expect(model.error).toBeNull();
    expect(server.gapsAfter(server.calls[n]).slice(-2)).toEqual([SLOW_REFRESH_MS, SLOW_REFRESH_MS]);
    jest.restoreAllMocks();
  });

  it('stands by while the page is hidden and resumes when it is shown', async () => {
    void model.start();
    await t(1_000);
    page.visibilityState = 'hidden';
    listeners['visibilitychange']();
    await t(5 * 60_000);
    expect(server.calls.length).toBeLessThanOrEqual(3); // one lingering tick at most, then none
    page.visibilityState = 'visible';
    listeners['visibilitychange']();
    const n = server.calls.length;
    await t(25_000);
    expect(server.calls.length).toBeGreaterThan(n);
  });

  it('stops polling when disposed', async () => {
    void model.start();
    await t(1_000);
    model.dispose();
    await t(60_000);
    expect(server.calls).toEqual([0]);
  });
});
