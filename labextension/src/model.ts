/**
 * One poller of `GET /ftnb/runs` shared by the sidebar and the status bar: every 2 s while a run is running,
 * every 10 s otherwise, backing off when the server does not answer, and not at all while the page is hidden.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { listRuns } from './api';
import { IRunList, chooseActiveRun, IRunSummary, refreshInterval } from './logic';

export class RunsModel {
  private _list: IRunList | null = null;
  private _error: string | null = null;
  private _failures = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _inFlight: Promise<void> | null = null;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);

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

  start(): void {
    void this.refresh();
  }

  /** Poll now (coalesced with a poll in flight) and reschedule. */
  refresh(): Promise<void> {
    if (this._inFlight) {
      return this._inFlight;
    }
    this._inFlight = this._poll().finally(() => {
      this._inFlight = null;
      this._schedule();
    });
    return this._inFlight;
  }

  dispose(): void {
    this._disposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
    }
    Signal.clearData(this);
  }

  private async _poll(): Promise<void> {
    try {
      this._list = await listRuns();
      this._error = null;
      this._failures = 0;
    } catch (e) {
      this._error = e instanceof Error ? e.message : String(e);
      this._failures++;
    }
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  private _schedule(): void {
    if (this._disposed) {
      return;
    }
    if (this._timer !== null) {
      clearTimeout(this._timer);
    }
    const wait = refreshInterval(this._list?.runs ?? null, this._failures);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (document.hidden) {
        this._schedule();
      } else {
        void this.refresh();
      }
    }, wait);
  }
}
