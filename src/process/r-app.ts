// Shiny apps as people write them (SPEC §12): an `app.R` that ends in
// shinyApp(), calls runApp() or reads SHINY_PORT, or a ui.R + server.R
// directory, served on the worker's port without the bundle knowing.
//
// Two small R files go into every R worker, read-only, through bwrap's
// --ro-bind-data (no host file, so no host path a worker UID must be able to
// traverse):
//
//   R_PROFILE_TARGET   the worker's R_PROFILE_USER: copies SHINY_HOST and
//                      SHINY_PORT into options(shiny.host, shiny.port) and
//                      removes them from the environment, so shiny does not
//                      take the worker for Shiny Server (it warns about its
//                      version, and refuses server-side bookmarks, whenever
//                      SHINY_PORT is set); then runs the spec's rProfilePath.
//   R_LAUNCHER_TARGET  runs an app directory: app.R as `Rscript app.R` would
//                      (each visible top-level value printed, so a final
//                      shinyApp() starts the app), else shiny::runApp(dir).
//
// Apps that read SHINY_PORT themselves still find it: the profile attaches a
// Sys.getenv that answers for the two names from code evaluated on the
// search path (the app's). Packages call base's own, so shiny sees neither.
// Nothing of the spec is pasted into R code: the app directory reaches the
// launcher as an argument, the spec's profile path as an environment value.
import { statSync } from 'node:fs';
import path from 'node:path';
import { hostPathOf, type SandboxView } from './command.js';

export const R_PROFILE_TARGET = '/tmp/.procyard/Rprofile';
export const R_LAUNCHER_TARGET = '/tmp/.procyard/launch.R';
/** Where the profile finds the spec's rProfilePath (removed before the app runs). */
export const USER_PROFILE_ENV = 'PROCYARD_R_PROFILE_USER';

export const R_PROFILE = `# procyard's R profile (R_PROFILE_USER of every R worker).
local({
  port <- Sys.getenv("SHINY_PORT")
  host <- Sys.getenv("SHINY_HOST")
  if (nzchar(port)) options(shiny.port = as.integer(port))
  if (nzchar(host)) options(shiny.host = host)
  Sys.unsetenv(c("SHINY_PORT", "SHINY_HOST"))
  kept <- c(SHINY_PORT = port, SHINY_HOST = host)
  kept <- kept[nzchar(kept)]
  if (length(kept) > 0) {
    getenv <- function(x = NULL, unset = "", names = NA) {
      value <- base::Sys.getenv(x, unset, names)
      if (is.character(x) && length(x) > 0) {
        hit <- x %in% base::names(kept)
        value[hit] <- base::unname(kept[x[hit]])
      }
      value
    }
    environment(getenv) <- list2env(list(kept = kept), parent = baseenv())
    assign("Sys.getenv", getenv, envir = attach(NULL, name = "procyard"))
  }
  user <- Sys.getenv("${USER_PROFILE_ENV}")
  Sys.unsetenv("${USER_PROFILE_ENV}")
  if (nzchar(user)) source(user, local = globalenv())
})
`;

export const R_LAUNCHER = `# procyard's launcher: Rscript ${R_LAUNCHER_TARGET} <app directory>
local({
  dir <- commandArgs(trailingOnly = TRUE)[1]
  setwd(dir)
  if (file.exists("app.R")) {
    source("app.R", local = globalenv(), print.eval = TRUE)
  } else if (file.exists("server.R")) {
    shiny::runApp(dir, launch.browser = FALSE)
  } else {
    stop("procyard: no app.R, and no ui.R + server.R, in ", dir, call. = FALSE)
  }
})
`;

/** The two files every R worker gets, as the sandbox's `files`. */
export const R_FILES: readonly { target: string; data: string }[] = Object.freeze([
  { target: R_PROFILE_TARGET, data: R_PROFILE },
  { target: R_LAUNCHER_TARGET, data: R_LAUNCHER },
]);

/** `R` or `Rscript` as the backend resolves them (process.rPath, rig). */
export function isRCommand(cmd: readonly string[]): boolean {
  return cmd[0] === 'R' || cmd[0] === 'Rscript';
}

/**
 * The app directory a worker's command runs as a Shiny app, or null for any
 * other command: no cmd (the default, `Rscript <workerMount>/app.R`), or
 * R/Rscript with one argument that is an `app.R` or an app directory.
 */
export function rAppDir(cmd: readonly string[] | undefined, workerMount: string, view: SandboxView): string | null {
  if (cmd === undefined) return workerMount;
  if (cmd.length !== 2 || !isRCommand(cmd)) return null;
  const target = cmd[1]!;
  if (!path.posix.isAbsolute(target)) return null;
  const normal = path.posix.normalize(target);
  if (path.posix.basename(normal) === 'app.R') return path.posix.dirname(normal);
  const host = hostPathOf(normal, view);
  try {
    return host !== null && statSync(host).isDirectory() ? normal : null;
  } catch {
    return null;
  }
}
