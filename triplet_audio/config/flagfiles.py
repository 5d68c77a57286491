"""Flag files with includes that work from any working directory.

absl resolves a `--flagfile=NAME` line inside a flag file against the working
directory, so flags/noise.cfg could not include flags/paper_base.cfg and be
used from elsewhere. `expand_flagfiles` expands flag files itself before absl
sees the command line, resolving an include against the including file's
directory. The binaries' parser (`cli.mains.parse_flags`) and the demo's
fingerprint of its flag files (`flag_file_sources`) use it. No TensorFlow.
"""

import os

from absl import flags

_FLAGFILE = ("--flagfile", "-flagfile")
_FLAGFILE_EQ = ("--flagfile=", "-flagfile=")


def expand_flagfiles(argv):
    """Replaces each --flagfile on a command line by the flags it holds.

    What absl's `FlagValues.read_flags_from_files` does, with one difference:
    a relative `--flagfile=NAME` line inside a flag file names a file in the
    including file's directory, not in the working directory, so that
    flags/noise.cfg can include `--flagfile=paper_base.cfg` and be used from
    anywhere. A --flagfile given on the command line itself is relative to
    the working directory, as in absl. Flags keep their order (the last
    setting of a flag wins); nothing after `--` is expanded.

    Args:
      argv: the command line (argv[0] first).

    Returns:
      The command line with no --flagfile left in it before any `--`.

    Raises:
      absl.flags.Error: a flag file cannot be read, includes itself, or
        names its include on a line of its own.
    """
    if not flags.FLAGS.is_gnu_getopt():
        return list(argv)  # absl stops at the first positional; not ours.
    out = list(argv[:1])
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg in _FLAGFILE and rest:  # --flagfile PATH
            out.extend(_flag_file(os.path.expanduser(rest.pop(0)), [])[0])
        elif arg.startswith(_FLAGFILE_EQ):
            path = os.path.expanduser(arg.split("=", 1)[1].strip())
            out.extend(_flag_file(path, [])[0])
        else:
            out.append(arg)  # A bare trailing --flagfile: absl reports it.
            if arg == "--":
                out.extend(rest)
                break
    return out


def flag_file_sources(path):
    """The files a flag file reads: `path`, then its includes, depth first.

    Each include is named as `expand_flagfiles` resolves it (relative to the
    including file's directory), so a fingerprint of these files' contents
    changes whenever what the flag file expands to does.

    Raises:
      absl.flags.Error: as `expand_flagfiles`.
    """
    return _flag_file(path, [])[1]


def _flag_file(path, including):
    """(flag lines, files read) of one flag file and its includes.

    Lines are read as absl reads them (blank lines and lines starting with
    `#` or `//` skipped, the rest stripped), except that they are stripped
    before the comment and include checks.

    Args:
      path: the flag file, as named (relative to the working directory or
        absolute); "" reads nothing, as in absl.
      including: the chain of files that include it (their real paths).
    """
    if not path:
        return [], []
    real = os.path.realpath(path)
    if real in including:
        raise flags.Error("flag file %s includes itself" % path)
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise flags.CantOpenFlagFileError(
            "cannot read flag file %s: %s" % (path, e.strerror or e)) from e
    args, files = [], [path]
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        if line in _FLAGFILE:
            raise flags.Error("%s: write the include as --flagfile=FILE on "
                              "one line" % path)
        if line.startswith(_FLAGFILE_EQ):
            name = os.path.expanduser(line.split("=", 1)[1].strip())
            if name and not os.path.isabs(name):
                name = os.path.join(os.path.dirname(path), name)
            try:
                sub_args, sub_files = _flag_file(name, including + [real])
            except flags.CantOpenFlagFileError as e:
                raise flags.CantOpenFlagFileError(
                    "%s (included by %s)" % (e, path)) from e
            args.extend(sub_args)
            files.extend(sub_files)
        else:
            args.append(line)
    return args, files
