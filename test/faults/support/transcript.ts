/**
 * Everything the fault suite sees the proxy produce (log lines, answers, metrics pages) and every secret the
 * suite hands it, so one test at the end can prove that no secret ever came back out.
 */
import { randomBytes } from 'node:crypto';

export type TranscriptKind = 'log' | 'stderr' | 'body' | 'metrics' | 'readyz';

interface Entry {
  kind: TranscriptKind;
  source: string;
  text: string;
}

const entries: Entry[] = [];
const secrets = new Map<string, string>();

/** A fresh secret value, registered so the final check looks for it. */
export function makeSecret(label: string): string {
  const value = `kvxS3cret-${label}-${randomBytes(12).toString('hex')}`;
  secrets.set(value, label);
  return value;
}

/** Registers a secret produced elsewhere (a minted JWT, a private key). Short values are refused: they would match by chance. */
export function registerSecret(label: string, value: string): void {
  if (value.length < 12) throw new Error(`secret ${label} is too short to search for reliably`);
  secrets.set(value, label);
}

export function record(kind: TranscriptKind, source: string, text: string | Buffer): void {
  const s = typeof text === 'string' ? text : text.toString('latin1');
  if (s.length > 0) entries.push({ kind, source, text: s.length > 1_000_000 ? s.slice(0, 1_000_000) : s });
}

export function transcriptStats(): Record<TranscriptKind, number> {
  const stats: Record<TranscriptKind, number> = { log: 0, stderr: 0, body: 0, metrics: 0, readyz: 0 };
  for (const e of entries) stats[e.kind] += 1;
  return stats;
}

export function secretCount(): number {
  return secrets.size;
}

/**
 * Where any registered secret (or a recognisable piece of it: a JWT's signature, a PEM body line, the base64
 * of a basic-auth pair) occurs in the transcript.
 */
export function findLeaks(): { label: string; kind: TranscriptKind; source: string; excerpt: string }[] {
  const needles: { needle: string; label: string }[] = [];
  for (const [value, label] of secrets) {
    needles.push({ needle: value, label });
    const jwtParts = value.split('.');
    if (jwtParts.length === 3 && jwtParts[2]!.length >= 20) needles.push({ needle: jwtParts[2]!, label: `${label} (JWT signature)` });
    if (value.includes('PRIVATE KEY')) {
      for (const line of value.split('\n')) if (line.length >= 40 && !line.includes('-----')) needles.push({ needle: line, label: `${label} (PEM line)` });
    }
  }
  const leaks: { label: string; kind: TranscriptKind; source: string; excerpt: string }[] = [];
  for (const entry of entries) {
    for (const { needle, label } of needles) {
      const at = entry.text.indexOf(needle);
      if (at !== -1) leaks.push({ label, kind: entry.kind, source: entry.source, excerpt: entry.text.slice(Math.max(0, at - 80), at + 20).replace(needle, '<SECRET>') });
    }
  }
  return leaks;
}
