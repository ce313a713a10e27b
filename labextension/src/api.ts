/**
 * The ftnb server extension's REST API. ServerConnection adds the token and, for POST, the XSRF header.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IRunList, runUrlPath } from './logic';

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'ftnb', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new Error(body?.message || `${response.status} ${response.statusText}`);
  }
  return body as T;
}

/** The listing; revalidated with its ETag, so an unchanged listing comes back as a body-less 304. */
export function listRuns(): Promise<IRunList> {
  return request<IRunList>('runs', { cache: 'no-cache' });
}

export function stopRun(path: string): Promise<void> {
  return request<void>(`runs/${runUrlPath(path)}/stop`, { method: 'POST' });
}

/** The quickstart notebook (nbformat 4 JSON). */
export function fetchTemplate(): Promise<any> {
  return request<any>('template');
}
