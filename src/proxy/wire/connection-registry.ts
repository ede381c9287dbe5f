/** A member knows its place in the registry that holds it; -1 when it is in none. */
export interface Registered {
  registryIndex: number;
}

/**
 * The open connections of a listener or a pool: a dense array in which each member keeps its own index, so
 * that adding and removing take constant time and a removed member is referenced by nothing.
 *
 * Not a Set. A small Set that objects enter in one event-loop turn and leave in a later one kept the objects
 * that had left it alive through V8's young-generation collections, until the next full one (most likely
 * through the tables V8 rebuilds a small Set into every few additions, linked for iterators: with 1,000
 * permanent entries, rebuilt far less often, it kept almost nothing). With a new connection per request, the
 * Sets of connections churned like that; docs/design.md ("No per-request Map or Set") has the figures.
 */
export class ConnectionRegistry<T extends Registered> implements Iterable<T> {
  private readonly members: T[] = [];

  get size(): number {
    return this.members.length;
  }

  has(member: T): boolean {
    return member.registryIndex !== -1 && this.members[member.registryIndex] === member;
  }

  add(member: T): void {
    if (member.registryIndex !== -1) return;
    member.registryIndex = this.members.length;
    this.members.push(member);
  }

  /** Removes `member`; false if it was not in the registry. */
  delete(member: T): boolean {
    if (!this.has(member)) return false;
    const at = member.registryIndex;
    const last = this.members.pop()!;
    if (last !== member) {
      this.members[at] = last;
      last.registryIndex = at;
    }
    member.registryIndex = -1;
    return true;
  }

  /**
   * Calls `visit` for every member, without copying them (sweeps walk thousands of connections). The walk goes
   * backwards, so members that `visit` removes make it skip none of the others; a member removed before its turn
   * is not visited, and the one moved into its place may be visited twice. (Closing a socket removes its
   * connection only on a later tick, so the sweeps never see that.)
   */
  forEach(visit: (member: T) => void): void {
    const members = this.members;
    for (let i = members.length - 1; i >= 0; i--) {
      const member = members[i];
      if (member !== undefined) visit(member);
    }
  }

  /** A copy: safe to walk while members come and go. */
  [Symbol.iterator](): Iterator<T> {
    return this.members.slice()[Symbol.iterator]();
  }
}
