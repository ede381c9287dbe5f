// Kept in code rather than read from package.json at run time, so the standalone executable knows it too;
// test/unit/version.test.ts fails when the two disagree.
export const VERSION = '0.1.0';
