/**
 * A fake MLflow tracking server (2.x REST API with `--serve-artifacts`, and MLflow 3's logged models) on
 * 127.0.0.1:0.
 *
 * Faithful where clients can tell: paths, methods, query/body parameter names (run_id and run_uuid), response
 * shapes (empty repeated fields omitted, as MLflow's protobuf JSON does), error bodies `{"error_code","message"}`
 * with MLflow's status mapping, Content-Type checks on POST, artifact bodies streamed to and from files (never
 * buffered). A `gate` in front of every request plays the auth layer.
 *
 * The parts: server.ts (HTTP, recording, gate, reply faults), routes.ts (the tracking REST API), store.ts (the
 * data and MLflow's logging rules), search-filter.ts (search filters and order_by), artifacts.ts (the artifacts
 * API and multipart uploads), gates.ts, protocol.ts (errors and JSON bodies).
 */
export { startFakeMlflow } from './server.js';
export type { FakeMlflow, FakeMlflowOptions, RecordedRequest, ReplyFault } from './server.js';
export { basicGate, bearerGate } from './gates.js';
export type { Gate, GateResult } from './gates.js';
export { FakeMlflowStore } from './store.js';
export type { Experiment, KeyValue, LoggedModel, Metric, Run, RunStatus } from './store.js';
