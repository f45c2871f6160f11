/**
 * The one registry of coded errors (DESIGN.md: `LW_ERR_<AREA>_<WHAT>`, each with an HTTP status).
 * Add a code here and a line to docs/errors.md; test/errors.test.ts fails when the two drift apart.
 */

export interface ErrorSpec {
  readonly status: number;
  readonly message: string;
}

export const ERRORS = {
  // model: checkpoints and graph builds
  LW_ERR_MODEL_NOT_FOUND: { status: 404, message: 'checkpoint directory or file not found' },
  LW_ERR_MODEL_UNSUPPORTED: { status: 400, message: 'checkpoint uses an unsupported feature' },
  LW_ERR_MODEL_CONFIG_INVALID: { status: 400, message: 'config.json is missing or invalid' },
  LW_ERR_MODEL_SAFETENSORS_CORRUPT: { status: 500, message: 'safetensors file is corrupt or truncated' },
  LW_ERR_MODEL_SHARD_MISSING: { status: 500, message: 'a shard named by the safetensors index is missing' },
  LW_ERR_MODEL_TENSOR_MISSING: { status: 500, message: 'a tensor the architecture needs is missing' },
  LW_ERR_MODEL_BUILD_OPTIONS: { status: 400, message: 'invalid graph build options' },
  // engine: sessions and generation
  LW_ERR_ENGINE_PROVIDER_UNAVAILABLE: { status: 500, message: 'execution provider not available (its libraries or a device for it are missing; the detail names them)' },
  LW_ERR_ENGINE_DEVICE_FEATURE_MISSING: { status: 500, message: 'the device lacks a feature the build needs (the detail names it, e.g. shader-f16 for fp16 activations)' },
  LW_ERR_ENGINE_SESSION_FAILED: { status: 500, message: 'the inference session failed' },
  LW_ERR_ENGINE_CONTEXT_LENGTH: { status: 400, message: 'prompt plus max_tokens exceeds the context length' },
  LW_ERR_ENGINE_BAD_REQUEST: { status: 400, message: 'invalid generation request' },
  LW_ERR_ENGINE_HOOK_UNKNOWN: { status: 400, message: 'hook point not present in this build' },
  LW_ERR_ENGINE_ABORTED: { status: 499, message: 'generation cancelled' },
  // tokenizer and chat templates
  LW_ERR_TOKENIZER_NOT_FOUND: { status: 500, message: 'tokenizer.json not found' },
  LW_ERR_TOKENIZER_TEMPLATE: { status: 400, message: 'chat template failed to render' },
  LW_ERR_TOKENIZER_INVALID: { status: 500, message: 'tokenizer files are invalid or unsupported' },
  // probes: probe files, fitting and scoring
  LW_ERR_PROBE_NOT_FOUND: { status: 404, message: 'probe file not found' },
  LW_ERR_PROBE_INVALID: { status: 400, message: 'probe file is malformed or fails validation' },
  LW_ERR_PROBE_MODEL_MISMATCH: { status: 409, message: 'probe was made for a different model' },
  LW_ERR_PROBE_INPUT_MISMATCH: { status: 500, message: 'activations do not match what the probe needs' },
  LW_ERR_PROBE_FIT: { status: 400, message: 'training data cannot fit the requested probe' },
  // concepts: stored concept vectors, resolved by name (src/probes/concept-store.ts; written by src/lab/concepts.ts)
  LW_ERR_CONCEPTS_NOT_FOUND: { status: 404, message: 'concept vectors or a named concept not found' },
  LW_ERR_CONCEPTS_INVALID: { status: 400, message: 'concept-vector files are malformed' },
  LW_ERR_CONCEPTS_MODEL_MISMATCH: { status: 409, message: 'concept vectors were made for a different model' },
  // trials: injection trials and their datasets (src/lab/trials.ts, dataset.ts)
  LW_ERR_TRIALS_CONFIG_NOT_FOUND: { status: 404, message: 'trial config file not found' },
  LW_ERR_TRIALS_CONFIG_INVALID: { status: 400, message: 'trial config is invalid' },
  LW_ERR_TRIALS_TEMPLATE: { status: 400, message: 'trial prompts cannot be built for this model' },
  LW_ERR_TRIALS_ANSWER_TOKEN: { status: 400, message: 'an answer string is not a single token of this tokenizer' },
  LW_ERR_TRIALS_MODEL_MISMATCH: { status: 409, message: 'trial data were made for a different model' },
  LW_ERR_TRIALS_DATASET_NOT_FOUND: { status: 404, message: 'trial dataset not found' },
  LW_ERR_TRIALS_DATASET_INVALID: { status: 400, message: 'trial dataset is malformed' },
  LW_ERR_TRIALS_DATASET_CONFLICT: { status: 409, message: 'output directory holds trials from another config or model' },
  // cli
  LW_ERR_CLI_USAGE: { status: 400, message: 'invalid command-line usage' },
  // config: daemon configuration (src/daemon/config.ts)
  LW_ERR_CONFIG_INVALID: { status: 500, message: 'daemon configuration is invalid' },
  LW_ERR_CONFIG_FILE_UNREADABLE: { status: 500, message: 'config file cannot be read or is not JSON' },
  LW_ERR_CONFIG_FLAG_UNKNOWN: { status: 400, message: 'unknown or malformed command-line flag' },
  // auth: API and admin keys (src/daemon/auth.ts)
  LW_ERR_AUTH_MISSING_KEY: { status: 401, message: 'missing API key' },
  LW_ERR_AUTH_INVALID_KEY: { status: 401, message: 'invalid API key' },
  LW_ERR_AUTH_ADMIN_REQUIRED: { status: 403, message: 'this operation requires the admin key' },
  LW_ERR_AUTH_INJECTION_DISABLED: { status: 403, message: 'injection is disabled on this daemon' },
  LW_ERR_AUTH_ORIGIN_FORBIDDEN: { status: 403, message: 'requests from this browser origin are not allowed' },
  LW_ERR_AUTH_HOST_FORBIDDEN: { status: 403, message: 'this daemon answers only requests addressed to a loopback host' },
  // api: HTTP request handling
  LW_ERR_API_BAD_REQUEST: { status: 400, message: 'invalid request' },
  LW_ERR_API_INVALID_JSON: { status: 400, message: 'request body is not valid JSON' },
  LW_ERR_API_UNSUPPORTED_PARAMETER: { status: 400, message: 'request parameter not supported by this daemon' },
  LW_ERR_API_MAX_TOKENS: { status: 400, message: 'max_tokens exceeds the configured limit' },
  LW_ERR_API_NOT_FOUND: { status: 404, message: 'no such route' },
  LW_ERR_API_MODEL_NOT_FOUND: { status: 404, message: 'the requested model is not served here' },
  LW_ERR_API_METHOD_NOT_ALLOWED: { status: 405, message: 'method not allowed on this route' },
  LW_ERR_API_BODY_TOO_LARGE: { status: 413, message: 'request body exceeds the configured limit' },
  LW_ERR_API_UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'unsupported content type' },
  LW_ERR_API_HEADERS_TOO_LARGE: { status: 431, message: 'request headers exceed the size limit' },
  LW_ERR_API_REQUEST_TIMEOUT: { status: 408, message: 'the request was not received in time' },
  LW_ERR_API_QUEUE_FULL: { status: 429, message: 'too many requests: the queue is full' },
  LW_ERR_API_INTERNAL: { status: 500, message: 'internal server error' },
  LW_ERR_API_SHUTTING_DOWN: { status: 503, message: 'the daemon is shutting down' },
  LW_ERR_API_NOT_READY: { status: 503, message: 'the daemon is not ready' },
  // serve: starting the daemon (src/daemon/daemon.ts)
  LW_ERR_SERVE_PORT_IN_USE: { status: 500, message: 'the listen address is already in use' },
  LW_ERR_SERVE_LISTEN: { status: 500, message: 'the daemon cannot listen on the configured address' },
  // upstream: proxy mode, `serve --upstream URL` (src/daemon/upstream.ts, proxy.ts)
  LW_ERR_UPSTREAM_UNAVAILABLE: { status: 503, message: 'the upstream model server is unreachable or unavailable' },
  LW_ERR_UPSTREAM_BAD_GATEWAY: { status: 502, message: 'the upstream model server failed or sent a malformed answer' },
  LW_ERR_UPSTREAM_TIMEOUT: { status: 504, message: 'the upstream model server did not answer in time' },
  LW_ERR_UPSTREAM_MODEL_MISMATCH: { status: 502, message: 'the upstream model server does not serve the model the local replica scores' },
  // canary: the periodic injection self-test (src/daemon/canary.ts)
  LW_ERR_CANARY_CONCEPTS_MISSING: { status: 500, message: 'the canary needs concept vectors stored for the model' },
  // alert: alert log and alert delivery (src/daemon/alert-log.ts, alert-hub.ts)
  LW_ERR_ALERT_LOG_OPEN: { status: 500, message: 'alert log cannot be opened' },
  LW_ERR_ALERT_LOG_WRITE: { status: 500, message: 'alert log write failed; the alert is kept in memory until the log recovers' },
  LW_ERR_ALERT_LOG_CLOSED: { status: 503, message: 'alert log is closed' },
  LW_ERR_ALERT_LOG_READ: { status: 500, message: 'alert log read failed' },
  LW_ERR_ALERT_BAD_QUERY: { status: 400, message: 'invalid alert query or filter' },
  LW_ERR_ALERT_CURSOR_AHEAD: { status: 409, message: 'alert cursor is ahead of this alert log' },
  // alert stream: several replicas on one NATS JetStream stream (src/daemon/nats-alert-store.ts, alert-outbox.ts)
  LW_ERR_ALERT_STREAM_UNAVAILABLE: { status: 503, message: 'the shared alert stream (NATS JetStream) is unreachable; new alerts wait in the local outbox' },
  LW_ERR_ALERT_STREAM_SETUP: { status: 500, message: 'the shared alert stream cannot be created or checked' },
  LW_ERR_ALERT_OUTBOX_OPEN: { status: 500, message: 'the local alert outbox cannot be opened' },
  // corpus: clean-prompt corpora for anomaly detectors (src/lab/corpus.ts)
  LW_ERR_CORPUS_NOT_FOUND: { status: 404, message: 'clean-prompt corpus file not found' },
  LW_ERR_CORPUS_INVALID: { status: 400, message: 'clean-prompt corpus is invalid' },
  // learn: the daemon learning a detector from its own traffic (src/daemon/learning.ts, src/probes/learn.ts)
  LW_ERR_LEARN_UNSUPPORTED: { status: 400, message: 'this probe cannot be learned from traffic' },
  LW_ERR_LEARN_BUSY: { status: 409, message: 'a learning run is already in progress' },
  LW_ERR_LEARN_MODEL_MISMATCH: { status: 409, message: 'learning statistics were collected on a different model' },
  LW_ERR_LEARN_STATE_INVALID: { status: 500, message: 'learning statistics file is malformed' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class LatentwatchError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, detail?: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    const spec = ERRORS[code];
    super(detail ? `${spec.message}: ${detail}` : spec.message, options);
    this.name = 'LatentwatchError';
    this.code = code;
    this.status = spec.status;
    this.details = details;
  }
}

/** Shorthand used at throw sites: `throw lwError('LW_ERR_MODEL_NOT_FOUND', dir)`. */
export function lwError(code: ErrorCode, detail?: string, details?: Record<string, unknown>, cause?: unknown): LatentwatchError {
  return new LatentwatchError(code, detail, details, cause === undefined ? undefined : { cause });
}

export function isLatentwatchError(e: unknown): e is LatentwatchError {
  return e instanceof LatentwatchError;
}
