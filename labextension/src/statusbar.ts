/**
 * The status bar item: the active run (the most recently updated running one) with its progress. The status bar
 * hides it while nothing runs (see `isActive` where it is registered).
 */
import { Widget } from '@lumino/widgets';

import { runsIcon } from './icons';
import { statusText } from './logic';
import { RunsModel } from './model';

export class RunStatusItem extends Widget {
  private _text: HTMLElement;

  constructor(
    private _model: RunsModel,
    onClick: () => void
  ) {
    super();
    this.addClass('ftnb-status');
    const icon = document.createElement('span');
    icon.className = 'ftnb-status-icon';
    runsIcon.element({ container: icon });
    this._text = document.createElement('span');
    this._text.className = 'ftnb-status-text';
    this.node.append(icon, this._text);
    this.node.addEventListener('click', onClick);
    this._model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this._model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const run = this._model.activeRun;
    this._text.textContent = run ? statusText(run) : '';
    this.node.title = run ? `Training ${run.path}; click to show the runs sidebar` : '';
  }
}
