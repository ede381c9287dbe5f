export { EXEC_EXIT, FORWARDED_SIGNALS, execWithProxy, prepareExecConfig } from './run.js';
export type { ExecOptions, ExecResult } from './run.js';
export { MLFLOW_CREDENTIAL_ENV, childEnvironment } from './child-env.js';
export type { ChildEnvironment } from './child-env.js';
