/**
 * ftnb in JupyterLab: a "New fine-tuning notebook" launcher card, palette entry and File menu item; commands that
 * insert each panel's cell; a runs sidebar with Stop and Open; a status bar item for the active run.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';

import { stopRun } from './api';
import { runsIcon } from './icons';
import { dirname, IRunSummary, openRunCellSource, PANEL_CELLS, PanelKind, runPathForKernel } from './logic';
import { RunsModel } from './model';
import { createFinetuneNotebook, insertCell } from './notebook';
import { RunsSidebar } from './sidebar';
import { RunStatusItem } from './statusbar';

const CATEGORY = 'Fine-tuning';

namespace CommandIDs {
  export const newNotebook = 'ftnb:new-notebook';
  export const showRuns = 'ftnb:show-runs';
  export const refreshRuns = 'ftnb:refresh-runs';
  export const insert = (kind: PanelKind) => `ftnb:insert-${kind}`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: '@ftnb/labextension:plugin',
  description: 'Fine-tuning notebooks, panel cells, a runs sidebar and a status bar item for ftnb.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILauncher, ICommandPalette, IMainMenu, IStatusBar, IDefaultFileBrowser, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    mainMenu: IMainMenu | null,
    statusBar: IStatusBar | null,
    browser: IDefaultFileBrowser | null,
    restorer: ILayoutRestorer | null
  ) => {
    const { commands, serviceManager, shell } = app;
    const model = new RunsModel();

    const currentFolder = (args: any): string =>
      typeof args?.cwd === 'string' ? args.cwd : browser?.model.path ?? '';

    commands.addCommand(CommandIDs.newNotebook, {
      label: 'New fine-tuning notebook',
      caption: 'Create finetune.ipynb from the ftnb quickstart in the current folder and open it',
      icon: runsIcon,
      execute: async args => {
        try {
          const path = await createFinetuneNotebook(serviceManager.contents, currentFolder(args));
          return await commands.execute('docmanager:open', { path, factory: 'Notebook' });
        } catch (e) {
          void showErrorMessage('Cannot create the fine-tuning notebook', String(e));
        }
      }
    });

    for (const kind of Object.keys(PANEL_CELLS) as PanelKind[]) {
      commands.addCommand(CommandIDs.insert(kind), {
        label: PANEL_CELLS[kind].label,
        caption: 'Insert the cell below the active cell of the current notebook',
        isEnabled: () => tracker.currentWidget !== null,
        execute: () => {
          const panel = tracker.currentWidget;
          if (panel) {
            shell.activateById(panel.id);
            insertCell(panel, PANEL_CELLS[kind].source);
          }
        }
      });
    }

    /** Insert `TrainingMonitor.open(<run>)` into the current notebook, or into a new one when none is open. */
    const openRun = async (run: IRunSummary, root: string) => {
      let panel: NotebookPanel | null = tracker.currentWidget;
      let fillEmpty = false;
      if (!panel) {
        panel = (await commands.execute('notebook:create-new', { cwd: browser?.model.path ?? '' })) as NotebookPanel;
        await panel.context.ready;
        fillEmpty = true;
      }
      shell.activateById(panel.id);
      const path = runPathForKernel(root, run.path, dirname(panel.context.path));
      insertCell(panel, openRunCellSource(path), fillEmpty);
    };

    const sidebar = new RunsSidebar(model, {
      open: (run, root) => {
        openRun(run, root).catch(e => void showErrorMessage('Cannot open the run', String(e)));
      },
      stop: run => stopRun(run.path)
    });
    shell.add(sidebar, 'left', { rank: 650 });
    restorer?.add(sidebar, 'ftnb-runs');

    commands.addCommand(CommandIDs.showRuns, {
      label: 'Show fine-tuning runs',
      execute: () => shell.activateById(sidebar.id)
    });
    commands.addCommand(CommandIDs.refreshRuns, {
      label: 'Refresh fine-tuning runs',
      execute: () => model.refresh()
    });

    if (statusBar) {
      statusBar.registerStatusItem('ftnb:active-run', {
        item: new RunStatusItem(model, () => shell.activateById(sidebar.id)),
        align: 'left',
        rank: 5,
        isActive: () => model.activeRun !== null,
        activeStateChanged: model.changed
      });
    }

    launcher?.add({ command: CommandIDs.newNotebook, category: CATEGORY, rank: 1 });
    mainMenu?.fileMenu.addGroup([{ command: CommandIDs.newNotebook }], 1);
    if (palette) {
      const all = [
        CommandIDs.newNotebook,
        ...(Object.keys(PANEL_CELLS) as PanelKind[]).map(CommandIDs.insert),
        CommandIDs.showRuns,
        CommandIDs.refreshRuns
      ];
      all.forEach(command => palette.addItem({ command, category: CATEGORY }));
    }

    // a cell that ran may have started a run (ftnb.train, monitor.start()): look often for the next 30 s
    NotebookActions.executionScheduled.connect(() => model.burst());

    void model.start();
  }
};

export default plugin;
