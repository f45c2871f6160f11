/**
 * Every PromQL query a dashboard JSON carries: panel targets (rows included) and the queries of
 * its template variables. Read from the JSON, not from the builders, so the checks see exactly
 * what Grafana loads.
 */
import { parseLabelValues } from './promql.js';

export interface DashboardQuery {
  dashboard: string;
  /** Panel title, or `$name` for a template variable. */
  where: string;
  refId: string;
  /** PromQL with Grafana variables still in it; for a variable, the `label_values` selector. */
  expr: string;
  kind: 'panel' | 'variable';
  /** For a `label_values(selector, label)` variable: the label. */
  label?: string;
}

interface PanelJson {
  title?: string;
  targets?: { expr?: string; refId?: string }[];
  panels?: PanelJson[];
}
interface VariableJson {
  name: string;
  type: string;
  query?: string | { query?: string };
}
export interface DashboardJson {
  title: string;
  uid: string;
  panels?: PanelJson[];
  templating?: { list?: VariableJson[] };
}

export function dashboardQueries(d: DashboardJson): DashboardQuery[] {
  const out: DashboardQuery[] = [];
  const visit = (panels: PanelJson[] | undefined) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) {
        if (typeof t.expr === 'string') out.push({ dashboard: d.title, where: p.title ?? '(untitled)', refId: t.refId ?? '', expr: t.expr, kind: 'panel' });
      }
      visit(p.panels);
    }
  };
  visit(d.panels);
  for (const v of d.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (!q) continue;
    const lv = parseLabelValues(q);
    if (!lv) throw new Error(`${d.title}: variable $${v.name}: only label_values(selector, label) queries are supported, got ${q}`);
    out.push({ dashboard: d.title, where: `$${v.name}`, refId: '', expr: lv.selector, kind: 'variable', label: lv.label });
  }
  return out;
}
