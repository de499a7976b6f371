// Builds dist/ once before any test file runs: the CLI, the crash server and
// the Redis peers run from dist/ in child processes, as a user's code would.
// One build here instead of one per file, so no file's children import a
// dist/ that another file's tsc is rewriting.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: 'inherit' });
}
