import { expect } from 'chai';
import { KvxError } from '../../src/errors.js';

/** The KvxError `fn` throws; the test fails when it throws nothing or something else. */
export function thrown(fn: () => unknown): KvxError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(KvxError);
    return err as KvxError;
  }
  expect.fail('expected an error');
}
