import { LabIcon } from '@jupyterlab/ui-components';

/** A loss curve falling over steps: the runs sidebar and the launcher card. */
const curve =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
  '<g class="jp-icon3" fill="#616161">' +
  '<path d="M3 3h2v16h16v2H3z"/>' +
  '<path d="M7 6.2c1.6 5.3 3.7 8.3 7 9.3 1.9.6 4 .5 6.6.3l.2 2c-2.8.3-5.2.4-7.4-.3C9.6 16.3 7 12.8 5.1 6.8z"/>' +
  '</g></svg>';

export const runsIcon = new LabIcon({ name: 'ftnb:runs', svgstr: curve });
