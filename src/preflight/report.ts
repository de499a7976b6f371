// The preflight report: every check's result, with a summary.

export type Severity = 'ok' | 'info' | 'warning' | 'error';

export interface CheckResult {
  name: string;
  severity: Severity;
  message: string;
  category: string;
}

export class PreflightReport {
  readonly ranAt: Date;
  readonly results: CheckResult[];
  readonly summary: { errors: number; warnings: number; info: number; ok: number };

  constructor(results: CheckResult[], ranAt: Date = new Date()) {
    this.ranAt = ranAt;
    this.results = results;
    const count = (s: Severity) => results.filter((r) => r.severity === s).length;
    this.summary = { errors: count('error'), warnings: count('warning'), info: count('info'), ok: count('ok') };
  }

  hasErrors(): boolean {
    return this.summary.errors > 0;
  }

  /** True for warnings or errors. */
  hasWarnings(): boolean {
    return this.summary.warnings > 0 || this.summary.errors > 0;
  }

  toJSON(): { ranAt: string; results: CheckResult[]; summary: PreflightReport['summary'] } {
    return { ranAt: this.ranAt.toISOString(), results: this.results, summary: this.summary };
  }
}
