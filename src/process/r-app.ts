// Shiny apps as people write them (SPEC §12): an `app.R` that ends in
// shinyApp(), calls runApp() or reads SHINY_PORT, or a ui.R + server.R
// directory, served on the worker's port without the bundle knowing.
//
// Three small R files go into every R worker, read-only, through bwrap's
// --ro-bind-data (no host file, so no host path a worker UID must be able to
// traverse); the third, R_WARM_TARGET, runs the warm pool's sandboxes:
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
import { MOUNT_TARGETS, R_PROFILE_TARGET, USER_PROFILE_ENV } from './bwrap.js';
import { hostPathOf, type SandboxView } from './command.js';

export { R_PROFILE_TARGET, USER_PROFILE_ENV } from './bwrap.js';
export const R_LAUNCHER_TARGET = '/tmp/.procyard/launch.R';

const R_PROFILE = `# procyard's R profile (R_PROFILE_USER of every R worker).
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

/** Runs the app directory `dir` (R code shared by the launcher and the warm sandbox). */
const RUN_APP = `  setwd(dir)
  if (file.exists("app.R")) {
    source("app.R", local = globalenv(), print.eval = TRUE)
  } else if (file.exists("server.R")) {
    shiny::runApp(dir, launch.browser = FALSE)
  } else {
    stop("procyard: no app.R, and no ui.R + server.R, in ", dir, call. = FALSE)
  }`;

const R_LAUNCHER = `# procyard's launcher: Rscript ${R_LAUNCHER_TARGET} <app directory>
local({
  dir <- commandArgs(trailingOnly = TRUE)[1]
${RUN_APP}
})
`;

export const R_WARM_TARGET = '/tmp/.procyard/warm.R';
/** The line a warm sandbox prints once it waits for its app, then the namespaces it has loaded. */
export const WARM_READY = 'procyard-warm: ready';
/** First field of the handoff message: its format's name. */
const HANDOFF_MAGIC = 'procyard-handoff-1';

/**
 * A warm sandbox: Rscript R_WARM_TARGET <package>... loads the packages,
 * renders one page (the first request's one-time work), says WARM_READY and
 * blocks on its stdin (no server runs yet, so nothing waits on R's event
 * loop) until the server writes the handoff and closes it. The message is
 * NUL-terminated fields, taken as bytes and never parsed as R: HANDOFF_MAGIC,
 * the app directory, the spec's R profile ('' for none), the library path
 * ('' for none), then name and value of each environment variable.
 */
export const R_WARM = `# procyard's warm sandbox: Rscript ${R_WARM_TARGET} <package>...
local({
  # Loaded, not attached: the app's own library() calls attach them, as in a cold worker.
  for (package in commandArgs(trailingOnly = TRUE)) suppressPackageStartupMessages(loadNamespace(package))
  # The first request a shiny app serves pays for starting the server and
  # for resolving and rendering the page's dependencies (~250 ms here); the
  # next ones take ~10-20 ms. Paid now, once: a throwaway app on this
  # sandbox's own port serves one request from R itself (a non-blocking
  # socket polled from R's event loop), then stops. Whatever goes wrong here
  # only makes the app's first request slower.
  if ("shiny" %in% loadedNamespaces()) local({
    port <- getOption("shiny.port")
    ui <- shiny::fluidPage(shiny::titlePanel("warm"), shiny::sliderInput("n", "n", 1, 10, 5), shiny::plotOutput("p"))
    app <- shiny::shinyApp(ui, function(input, output, session) {})
    request <- function() {
      con <- tryCatch(socketConnection("127.0.0.1", port, blocking = FALSE, open = "r+b", timeout = 2), error = function(e) NULL)
      if (is.null(con)) return(shiny::stopApp())
      writeBin(charToRaw("GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n"), con)
      polls <- 0L
      poll <- function() {
        polls <<- polls + 1L
        if (length(readBin(con, "raw", 65536L)) > 0L || polls > 200L) {
          close(con)
          shiny::stopApp()
        } else later::later(poll, 0.01)
      }
      later::later(poll, 0.01)
    }
    later::later(request, 0.05)
    attached <- search()
    try(shiny::runApp(app, port = port, host = "127.0.0.1", launch.browser = FALSE, quiet = TRUE), silent = TRUE)
    # runApp attaches shiny: the app's search path must be a cold worker's.
    for (name in setdiff(search(), attached)) detach(name, character.only = TRUE)
  })
  cat("${WARM_READY}", loadedNamespaces(), "\\n")
})
local({
  input <- file("stdin", "rb")
  bytes <- raw(0)
  repeat {
    chunk <- readBin(input, "raw", 65536L)
    if (length(chunk) == 0L) break
    bytes <- c(bytes, chunk)
  }
  close(input)
  ends <- which(bytes == as.raw(0L))
  starts <- c(1L, head(ends, -1L) + 1L)
  fields <- mapply(function(a, b) if (b > a) rawToChar(bytes[a:(b - 1L)]) else "", starts, ends, USE.NAMES = FALSE)
  if (length(fields) < 4L || fields[1L] != "${HANDOFF_MAGIC}" || length(fields) %% 2L != 0L)
    stop("procyard: no app was handed to this warm sandbox", call. = FALSE)
  dir <- fields[2L]
  profile <- fields[3L]
  library <- fields[4L]
  env <- fields[-(1:4)]
  if (length(env) > 0L) {
    names <- env[c(TRUE, FALSE)]
    values <- env[c(FALSE, TRUE)]
    do.call(Sys.setenv, as.list(stats::setNames(values, names)))
  }
  if (nzchar(library)) .libPaths(c(library, .libPaths()))
  if (nzchar(profile)) source(profile, local = globalenv())
${RUN_APP}
})
`;

/**
 * The handoff message for a warm sandbox (see R_WARM): the fields as bytes.
 * No field may hold a NUL (environment entries cannot; paths are checked).
 */
export function handoffMessage(dir: string, profile: string, library: string, env: readonly (readonly [string, string])[]): Buffer {
  const fields = [HANDOFF_MAGIC, dir, profile, library, ...env.flat()];
  if (fields.some((f) => f.includes('\0'))) throw new TypeError('a handoff field holds a NUL byte');
  return Buffer.from(fields.map((f) => `${f}\0`).join(''), 'utf8');
}

/**
 * The mount point every R worker gets in its read-only /run (tokenDir's,
 * /var/run/blockyard), whether or not its spec binds one there: a warm
 * sandbox could not make it after its start.
 */
export const R_RUN_DIRS: readonly string[] = Object.freeze([MOUNT_TARGETS.token.replace(/^\/var\/run\//, '/run/')]);

/**
 * The files every R worker gets, as the sandbox's `files`: the same three
 * cold and warm, so that a warm worker's mounts are a cold one's.
 */
export const R_FILES: readonly { target: string; data: string }[] = Object.freeze([
  { target: R_PROFILE_TARGET, data: R_PROFILE },
  { target: R_LAUNCHER_TARGET, data: R_LAUNCHER },
  { target: R_WARM_TARGET, data: R_WARM },
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
