/**
 * Notebook operations: create the quickstart notebook under a free name, and insert a cell below the active one.
 */
import { Contents } from '@jupyterlab/services';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';

import { fetchTemplate } from './api';
import { joinPath, uniqueNotebookName } from './logic';

/** Save the server's quickstart template as `finetune.ipynb` (or -1, -2, ...) in `dir`; returns its path. */
export async function createFinetuneNotebook(contents: Contents.IManager, dir: string): Promise<string> {
  const [template, listing] = await Promise.all([fetchTemplate(), contents.get(dir, { content: true })]);
  const taken = (listing.content as Contents.IModel[]).map(item => item.name);
  for (;;) {
    const name = uniqueNotebookName(taken);
    const path = joinPath(dir, name);
    if (!(await exists(contents, path))) {
      // checked again just before saving: someone may have created it since the listing
      await contents.save(path, { type: 'notebook', format: 'json', content: template });
      return path;
    }
    taken.push(name);
  }
}

async function exists(contents: Contents.IManager, path: string): Promise<boolean> {
  try {
    await contents.get(path, { content: false });
    return true;
  } catch {
    return false;
  }
}

/** Insert a code cell holding `source` below the active cell (or fill the active cell when it is empty and
 * `fillEmpty`), select it and scroll to it. */
export function insertCell(panel: NotebookPanel, source: string, fillEmpty = false): void {
  const notebook = panel.content;
  const active = notebook.activeCell;
  if (!(fillEmpty && active && active.model.type === 'code' && active.model.sharedModel.getSource() === '')) {
    NotebookActions.insertBelow(notebook);
  }
  const cell = notebook.activeCell;
  if (cell) {
    cell.model.sharedModel.setSource(source);
    void notebook.scrollToCell(cell);
  }
}
