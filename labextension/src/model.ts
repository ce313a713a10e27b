/**
 * One poller of `GET /ftnb/runs` shared by the sidebar and the status bar, a lumino `Poll`: every second for 30 s
 * after a run starts or Refresh is pressed, every 2 s while a run is running, every 10 s otherwise; it backs off
 * when the server does not answer and stands by while the page is hidden.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { listRuns } from './api';
import {
  BURST_MS,
  chooseActiveRun,
  IRunList,
  IRunSummary,
  MAX_BACKOFF_MS,
  newlyRunning,
  refreshInterval
} from './logic';

export class RunsModel {
  private _list: IRunList | null = null;
  private _error: string | null = null;
  private _burstUntil = 0;
  private _changed = new Signal<this, void>(this);
  private _poll: Poll;

  /** `fetchRuns` and `now` are for the tests. */
  constructor(
    private _fetchRuns: () => Promise<IRunList> = listRuns,
    private _now: () => number = Date.now
  ) {
    this._poll = new Poll({
      auto: false,
      factory: () => this._fetch(),
      frequency: { interval: refreshInterval(null), backoff: true, max: MAX_BACKOFF_MS },
      name: 'ftnb:runs',
      standby: 'when-hidden'
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get list(): IRunList | null {
    return this._list;
  }

  get runs(): IRunSummary[] {
    return this._list?.runs ?? [];
  }

  /** The server's last error message, or null after a good answer. */
  get error(): string | null {
    return this._error;
  }

  get activeRun(): IRunSummary | null {
    return chooseActiveRun(this.runs);
  }

  /** The wait before the next poll after a good answer (ms). */
  get interval(): number {
    return this._poll.frequency.interval;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  start(): Promise<void> {
    return this._poll.start();
  }

  /** Poll now, then fast for a while (Refresh pressed, or a cell may have started a run). */
  refresh(): Promise<void> {
    this.burst();
    return this._poll.refresh();
  }

  /** Poll fast for the next BURST_MS without polling now. */
  burst(): void {
    this._burstUntil = this._now() + BURST_MS;
    this._setInterval();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _fetch(): Promise<void> {
    let list: IRunList;
    try {
      list = await this._fetchRuns();
    } catch (e) {
      this._error = e instanceof Error ? e.message : String(e);
      this._changed.emit();
      throw e; // the Poll backs off
    }
    if (newlyRunning(this._list?.runs ?? null, list.runs).length) {
      this._burstUntil = this._now() + BURST_MS;
    }
    this._list = list;
    this._error = null;
    this._setInterval(); // before resolving: the Poll schedules the next tick with it
    this._changed.emit();
  }

  private _setInterval(): void {
    if (!this._poll.isDisposed) {
      this._poll.frequency = {
        interval: refreshInterval(this._list?.runs ?? null, this._now(), this._burstUntil),
        backoff: true,
        max: MAX_BACKOFF_MS
      };
    }
  }
}
