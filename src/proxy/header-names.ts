/**
 * A set of header names, asked with a name in the case it arrived in. Most names of a request or an answer
 * are in none of the proxy's lists, and most of those are of a length no listed name has: they are passed
 * over by their length alone, without being lower-cased and hashed as a new string. Lower-casing and hashing
 * every name took a twelfth of the instructions kvx spends on a small GET (measured with callgrind), since
 * each name is a string the parser made for this message.
 *
 * Cheap to build, as one is built for a Connection header naming more hop-by-hop headers (`Connection: close`
 * does). Header names are tokens (ASCII, which llhttp and the configuration check enforce), so lower-casing
 * keeps their length.
 */
export class HeaderNameSet {
  /** The lower-case names. */
  private readonly names: string[] = [];
  /** Bit n set: a name of n characters is in the set (n < 31); bit 31: a longer one is. */
  private lengths = 0;

  constructor(names: Iterable<string>) {
    for (const name of names) {
      const lower = name.toLowerCase();
      if (this.names.includes(lower)) continue;
      this.names.push(lower);
      this.lengths |= lengthBit(lower.length);
    }
  }

  get size(): number {
    return this.names.length;
  }

  /** Whether `name`, in any case, is in the set; lower-cased only if a listed name has its length. */
  has(name: string): boolean {
    if ((this.lengths & lengthBit(name.length)) === 0) return false;
    let lower: string | undefined;
    for (const candidate of this.names) {
      if (candidate.length !== name.length) continue;
      if (candidate === name || candidate === (lower ??= name.toLowerCase())) return true;
    }
    return false;
  }
}

const lengthBit = (length: number): number => 1 << (length < 31 ? length : 31);

export const NO_HEADER_NAMES = new HeaderNameSet([]);

/**
 * Whether `name`, in any case, is `lower` (a lower-case name): by length first, then as it is, then lower-cased.
 * (A loop folding the case of each character cost more instructions than the builtin, measured with callgrind.)
 */
export function isHeader(name: string, lower: string): boolean {
  return name.length === lower.length && (name === lower || name.toLowerCase() === lower);
}
