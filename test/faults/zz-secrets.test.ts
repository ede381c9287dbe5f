/**
 * Runs last (mocha sorts the files): every log line, stderr line, answer body and metrics page the suite saw
 * the proxy produce, searched for every token, key and password the suite handed it or had minted.
 */
import { expect } from 'chai';
import { findLeaks, secretCount, transcriptStats } from './support/transcript.js';

describe('faults: secrets', () => {
  it('no token, key or password used by the suite appears in any log line, error body or metrics page', () => {
    const stats = transcriptStats();
    // Guard against a vacuous pass: this only means something after the rest of the suite ran.
    expect(stats.log, 'too few log lines: run the whole suite (npm run test:faults)').to.be.above(200);
    expect(stats.body).to.be.above(50);
    expect(stats.metrics).to.be.above(10);
    expect(stats.stderr, 'start-up failures write to stderr').to.be.above(5);
    expect(secretCount()).to.be.above(20);
    const leaks = findLeaks();
    expect(leaks, JSON.stringify(leaks.slice(0, 5), null, 2)).to.deep.equal([]);
  });
});
