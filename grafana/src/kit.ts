/**
 * The few conventions every latentwatch dashboard shares, on top of @grafana/grafana-foundation-sdk:
 * a Prometheus datasource variable, an instance variable, explicit panel ids and a left-to-right grid.
 */
import * as common from '@grafana/grafana-foundation-sdk/common';
import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import * as stat from '@grafana/grafana-foundation-sdk/stat';
import * as timeseries from '@grafana/grafana-foundation-sdk/timeseries';

/** Every panel and query reads from the dashboard's `datasource` variable. */
export const DS: common.DataSourceRef = { type: 'prometheus', uid: '${datasource}' };

/** Grafana's rate window: at least four scrape intervals, so rate() always sees two samples. */
export const RATE = '$__rate_interval';

/** Label matchers every query carries: the instance picker. */
export const INSTANCE = 'instance=~"$instance"';

export function datasourceVariable(): dashboard.DatasourceVariableBuilder {
  return new dashboard.DatasourceVariableBuilder('datasource').label('Data source').type('prometheus');
}

/** A multi-value query variable over a label of a daemon metric, with an "All" option matching everything. */
export function labelVariable(name: string, label: string, selector: string, labelName: string): dashboard.QueryVariableBuilder {
  const query = `label_values(${selector}, ${labelName})`;
  return new dashboard.QueryVariableBuilder(name)
    .label(label)
    .datasource(DS)
    .query({ query, refId: `${name}-variable` })
    .definition(query)
    .refresh(dashboard.VariableRefresh.OnTimeRangeChanged)
    .sort(dashboard.VariableSort.AlphabeticalAsc)
    .multi(true)
    .includeAll(true)
    .allValue('.*')
    .current({ selected: true, text: ['All'], value: ['$__all'] });
}

export function instanceVariable(): dashboard.QueryVariableBuilder {
  return labelVariable('instance', 'Instance', 'latentwatch_build_info', 'instance');
}

/** One PromQL target. */
export function query(expr: string, legend: string, refId = 'A'): DataqueryBuilder {
  return new DataqueryBuilder().datasource(DS).expr(expr).legendFormat(legend).refId(refId);
}

/** Targets for p50/p90/p99 of a histogram family, grouped by `by` (besides le). */
export function quantileTargets(family: string, by: string[], selector: string, legendPrefix: string): DataqueryBuilder[] {
  const group = ['le', ...by].join(', ');
  return [0.5, 0.9, 0.99].map((q, i) =>
    query(
      `histogram_quantile(${q}, sum by (${group}) (rate(${family}_bucket{${selector}}[${RATE}])))`,
      `${legendPrefix}p${Math.round(q * 100)}`,
      String.fromCharCode(65 + i),
    ),
  );
}

export function legend(): common.VizLegendOptionsBuilder {
  return new common.VizLegendOptionsBuilder()
    .showLegend(true)
    .displayMode(common.LegendDisplayMode.Table)
    .placement(common.LegendPlacement.Bottom)
    .calcs(['mean', 'max', 'lastNotNull']);
}

export function tooltip(): common.VizTooltipOptionsBuilder {
  return new common.VizTooltipOptionsBuilder().mode(common.TooltipDisplayMode.Multi).sort(common.SortOrder.Descending);
}

/** A time series panel with the shared legend and tooltip. */
export function timeSeries(title: string, description: string, unit: string): timeseries.PanelBuilder {
  return new timeseries.PanelBuilder()
    .title(title)
    .description(description)
    .datasource(DS)
    .unit(unit)
    .legend(legend())
    .tooltip(tooltip())
    .lineWidth(1)
    .fillOpacity(10)
    .showPoints(common.VisibilityMode.Never)
    .spanNulls(false);
}

/** Stacked bars, for event rates (detections, alerts, canary runs). */
export function stackedBars(title: string, description: string, unit: string): timeseries.PanelBuilder {
  return timeSeries(title, description, unit)
    .drawStyle(common.GraphDrawStyle.Bars)
    .fillOpacity(80)
    .stacking(new common.StackingConfigBuilder().mode(common.StackingMode.Normal));
}

export function thresholds(steps: { value: number | null; color: string }[]): dashboard.ThresholdsConfigBuilder {
  return new dashboard.ThresholdsConfigBuilder().mode(dashboard.ThresholdsMode.Absolute).steps(steps);
}

/** A single-value panel showing the last value. */
export function statPanel(title: string, description: string, unit: string): stat.PanelBuilder {
  return new stat.PanelBuilder()
    .title(title)
    .description(description)
    .datasource(DS)
    .unit(unit)
    .graphMode(common.BigValueGraphMode.Area)
    .colorMode(common.BigValueColorMode.Value)
    .reduceOptions(new common.ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false));
}

/** What `Grid.add` needs of a panel builder (every SDK panel builder has these). */
type PlaceablePanel = Parameters<dashboard.DashboardBuilder['withPanel']>[0] & {
  id(id: number): unknown;
  gridPos(g: dashboard.GridPos): unknown;
};

/**
 * Places panels left to right in rows 24 units wide, numbering them; `row()` starts a new
 * (expanded) row panel. Ids and positions are explicit so that the generated JSON is stable.
 */
export class Grid {
  private nextId = 1;
  private x = 0;
  private y = 0;
  private rowHeight = 0;
  constructor(private readonly board: dashboard.DashboardBuilder) {}

  row(title: string): this {
    this.newline();
    const row = new dashboard.RowBuilder(title).id(this.nextId++).gridPos({ x: 0, y: this.y, w: 24, h: 1 });
    this.board.withRow(row);
    this.y += 1;
    return this;
  }

  add(panel: PlaceablePanel, w: number, h = 8): this {
    if (this.x + w > 24) this.newline();
    panel.id(this.nextId++);
    panel.gridPos({ x: this.x, y: this.y, w, h });
    this.board.withPanel(panel);
    this.x += w;
    this.rowHeight = Math.max(this.rowHeight, h);
    return this;
  }

  private newline(): void {
    if (this.x === 0) return;
    this.y += this.rowHeight;
    this.x = 0;
    this.rowHeight = 0;
  }
}
