/** Names this long or longer share one slot of the length table. */
const LONG = 64;

/**
 * A set of header names, asked with a name in the case it arrived in. Most names of a request or an answer
 * are in none of the proxy's lists, and most of those are of a length no listed name has: they are passed
 * over by their length alone, without being lower-cased and hashed as a new string. Lower-casing and hashing
 * every name took a twelfth of the instructions kvx spends on a small GET (measured with callgrind), since
 * each name is a string the parser made for this message.
 *
 * Header names are tokens (ASCII, which llhttp and the configuration check enforce), so lower-casing keeps
 * their length.
 */
export class HeaderNameSet {
  /**
   * The lower-case names, by length; names of LONG characters or more share the last slot. Every slot holds
   * an array, empty for most: a read past an array's end or of a hole takes V8's slow path.
   */
  private readonly byLength: string[][];
  readonly size: number;

  constructor(names: Iterable<string>) {
    const unique = new Set<string>();
    for (const name of names) unique.add(name.toLowerCase());
    this.byLength = Array.from({ length: LONG + 1 }, (): string[] => []);
    for (const lower of unique) this.byLength[lower.length < LONG ? lower.length : LONG]!.push(lower);
    this.size = unique.size;
  }

  /**
   * Whether `name`, in any case, is in the set. The few names of its length are compared one by one, which
   * for lists this short costs less than hashing the new string.
   */
  has(name: string): boolean {
    const candidates = this.byLength[name.length < LONG ? name.length : LONG]!;
    if (candidates.length === 0) return false;
    for (const candidate of candidates) if (candidate === name) return true;
    const lower = name.toLowerCase();
    if (lower === name) return false;
    for (const candidate of candidates) if (candidate === lower) return true;
    return false;
  }
}

export const NO_HEADER_NAMES = new HeaderNameSet([]);

/**
 * Whether `name`, in any case, is `lower` (a lower-case name): by length first, then as it is, then lower-cased.
 * (A loop folding the case of each character cost more instructions than the builtin, measured with callgrind.)
 */
export function isHeader(name: string, lower: string): boolean {
  return name.length === lower.length && (name === lower || name.toLowerCase() === lower);
}
