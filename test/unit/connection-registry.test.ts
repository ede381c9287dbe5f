import { expect } from 'chai';
import { ConnectionRegistry } from '../../src/proxy/wire/connection-registry.js';

class Member {
  registryIndex = -1;
  constructor(readonly name: string) {}
}

const names = (registry: ConnectionRegistry<Member>) => [...registry].map((m) => m.name).sort();

describe('ConnectionRegistry', () => {
  it('adds, finds and removes members, each once', () => {
    const registry = new ConnectionRegistry<Member>();
    const [a, b, c] = [new Member('a'), new Member('b'), new Member('c')];
    registry.add(a);
    registry.add(b);
    registry.add(c);
    registry.add(b);
    expect(registry.size).to.equal(3);
    expect(names(registry)).to.deep.equal(['a', 'b', 'c']);

    expect(registry.delete(a)).to.equal(true);
    expect(registry.delete(a)).to.equal(false);
    expect(registry.has(a)).to.equal(false);
    expect(a.registryIndex).to.equal(-1);
    expect(registry.has(c)).to.equal(true);
    expect(names(registry)).to.deep.equal(['b', 'c']);

    registry.add(a);
    expect(names(registry)).to.deep.equal(['a', 'b', 'c']);
  });

  it('does not mistake a member of another registry for its own', () => {
    const one = new ConnectionRegistry<Member>();
    const other = new ConnectionRegistry<Member>();
    const [a, b] = [new Member('a'), new Member('b')];
    one.add(a);
    other.add(b);
    expect(one.has(b)).to.equal(false);
    expect(one.delete(b)).to.equal(false);
    expect(other.has(b)).to.equal(true);
  });

  it('visits every member once while the visit removes members', () => {
    const registry = new ConnectionRegistry<Member>();
    const members = Array.from({ length: 10 }, (_, i) => new Member(String(i)));
    for (const m of members) registry.add(m);
    const visited: string[] = [];
    registry.forEach((m) => {
      visited.push(m.name);
      // Closing a connection in a sweep removes it; so may closing it remove another one.
      registry.delete(m);
      if (m.name === '7') registry.delete(members[2]!);
    });
    expect(visited.sort()).to.deep.equal(['0', '1', '3', '4', '5', '6', '7', '8', '9']);
    expect(registry.size).to.equal(0);
  });

  it('keeps no reference to a removed member', () => {
    const registry = new ConnectionRegistry<Member>();
    const [a, b] = [new Member('a'), new Member('b')];
    registry.add(a);
    registry.add(b);
    registry.delete(b);
    registry.delete(a);
    // The backing array is the only place a removed member could linger.
    const backing = (registry as unknown as { members: Member[] }).members;
    expect(backing.length).to.equal(0);
    expect(Object.values(backing)).to.deep.equal([]);
  });
});
