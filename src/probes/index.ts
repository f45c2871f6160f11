/** Public surface of src/probes: pure math and file formats, no model and no runtime. */
export * from './aggregators.js';
export * from './gaussian.js';
export * from './logistic.js';
export * from './matrix.js';
export * from './metrics.js';
export * from './probe-file.js';
export * from './probe.js';
export * from './svg-plot.js';
