import v8 from 'node:v8';
import { expect } from 'chai';
import { GROWTH_BYTES, IDLE_MS, IdleMemoryReducer } from '../../src/proxy/idle-memory.js';
import { Logger } from '../../src/log/logger.js';
import { LogCapture } from '../helpers/proxy.js';

const MB = 1024 * 1024;

describe('IdleMemoryReducer', function () {
  this.timeout(20_000);
  let requests: number;
  let connections: number;
  let busy: boolean;
  let heap: number;
  let logs: LogCapture;
  let reducer: IdleMemoryReducer;

  beforeEach(() => {
    requests = 0;
    connections = 0;
    busy = false;
    heap = 20 * MB;
    logs = new LogCapture();
    reducer = new IdleMemoryReducer(
      { requestsStarted: () => requests, openConnections: () => connections, busy: () => busy },
      new Logger('debug', logs),
      () => heap,
    );
  });

  it('reduces once when the proxy has been idle for the idle time after its heap grew, and again only after new traffic', () => {
    expect(reducer.check(0)).to.equal(false);
    requests = 500;
    connections = 40;
    heap += GROWTH_BYTES + MB;
    expect(reducer.check(1000), 'traffic just happened').to.equal(false);
    connections = 0;
    expect(reducer.check(2000), 'connections just closed').to.equal(false);
    expect(reducer.check(2000 + IDLE_MS - 1), 'not idle long enough').to.equal(false);
    expect(reducer.check(2000 + IDLE_MS)).to.equal(true);
    expect(reducer.check(2000 + IDLE_MS + 1000), 'once per idle spell').to.equal(false);
    expect(reducer.check(2000 + 10 * IDLE_MS)).to.equal(false);
    expect(logs.records().filter((r) => r['msg'] === 'idle: returned memory after a burst')).to.have.length(1);
    requests = 501;
    expect(reducer.check(3000 + 10 * IDLE_MS)).to.equal(false);
    expect(reducer.check(3000 + 11 * IDLE_MS), 'idle again after new traffic').to.equal(true);
  });

  it('leaves a heap that has not grown, or a proxy with requests under way, alone', () => {
    requests = 10;
    heap += GROWTH_BYTES - 1;
    expect(reducer.check(0)).to.equal(false);
    expect(reducer.check(IDLE_MS * 2), 'grew too little').to.equal(false);
    requests = 11;
    busy = true;
    heap += MB;
    expect(reducer.check(IDLE_MS * 3)).to.equal(false);
    expect(reducer.check(IDLE_MS * 5), 'a long transfer starts no request but is not idle').to.equal(false);
    busy = false;
    expect(reducer.check(IDLE_MS * 6 - 1), 'idle only since the transfer ended').to.equal(false);
    expect(reducer.check(IDLE_MS * 6)).to.equal(true);
  });

  it('a reduction gives back the young generation a burst of allocations grew', () => {
    const real = new IdleMemoryReducer({ requestsStarted: () => 1, openConnections: () => 0, busy: () => false }, new Logger('silent', logs));
    // A burst of short-lived allocations, as a proxy under load makes: V8 grows the young generation for it.
    const keep: unknown[] = [];
    for (let round = 0; round < 200; round++) {
      for (let i = 0; i < 200_000; i++) {
        keep.push({ i, list: [i] });
        if (keep.length > 50_000) keep.length = 0;
      }
    }
    keep.length = 0;
    const newSpace = () => v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_size;
    const grown = newSpace();
    expect(real.check(0)).to.equal(false);
    expect(real.check(IDLE_MS), 'the heap grew: a reduction runs').to.equal(true);
    expect(newSpace(), `new space ${grown / MB} MB before`).to.be.below(grown / 2);
  });
});
