"""
nanoGPT's "poor man's configurator", made strict. A script defines its defaults as
globals, then calls

    from configurator import configure
    configure(globals())

which applies, in order, every argument of the command line:
    python train.py config/override_file.py --batch_size=32
A bare argument is a Python config file whose assignments override the defaults;
--key=value is parsed as a Python literal (falling back to a plain string).
Unlike nanoGPT, a mistake stops the run with one line instead of silently creating a
new global: an unknown key (the closest known keys are suggested) or a value of the
wrong type. An int is accepted where a float is expected, true/false spell bools, a
key whose default is None takes any value, and values may contain '='.

Every script imports this module first, so it also owns the project's way of
reporting a user's mistake: raise UserError and the user sees one line, no traceback.
"""

import ast
import difflib
import os
import sys


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file, ...): shown as one line."""


def _excepthook(exc_type, exc, tb):
    if issubclass(exc_type, UserError):
        # sys.__stderr__, not sys.stderr: torch.distributed wraps this hook with one that
        # buffers sys.stderr and would drop the message when sys.exit leaves the hook
        print(f"error: {exc}", file=sys.__stderr__, flush=True)
        sys.exit(2)
    sys.__excepthook__(exc_type, exc, tb)


sys.excepthook = _excepthook

CONFIG_TYPES = (bool, int, float, str, type(None))


def config_keys(namespace):
    """The configurable names of a script: public globals of plain types."""
    return [k for k, v in namespace.items() if not k.startswith('_') and isinstance(v, CONFIG_TYPES)]


def _check(key, value, namespace, known, source):
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see the globals at the top of the script"
        raise UserError(f"unknown config key '{key}' (from {source}){hint}")
    default = namespace[key]
    if default is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int):
        return float(value)
    elif type(value) == type(default):
        return value
    raise UserError(f"config key '{key}' expects {type(default).__name__} (default {default!r}), got {value!r} from {source}")


def _parse_value(text, default):
    if isinstance(default, bool) and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if isinstance(default, str):
        return text # a string option is taken as typed, even if it looks like a number
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def configure(namespace, argv=None):
    """Apply config files and --key=value overrides from argv (default sys.argv[1:]) to
    namespace (a script's globals()). Returns {key: value} of all config keys."""
    argv = sys.argv[1:] if argv is None else argv
    known = config_keys(namespace)
    for arg in argv:
        if not arg.startswith('--'):
            if '=' in arg:
                raise UserError(f"argument '{arg}' looks like an override: write it as --{arg}")
            if not os.path.isfile(arg):
                raise UserError(f"config file '{arg}' not found (config files live in config/)")
            print(f"Overriding config with {arg}:")
            with open(arg) as f:
                source = f.read()
            print(source)
            values = {}
            exec(compile(source, arg, 'exec'), {}, values)
            for key, value in values.items():
                if not key.startswith('_') and isinstance(value, CONFIG_TYPES):
                    namespace[key] = _check(key, value, namespace, known, arg)
        else:
            if '=' not in arg:
                raise UserError(f"option '{arg}' needs a value: write {arg}=VALUE")
            key, text = arg[2:].split('=', 1)
            value = _parse_value(text, namespace.get(key))
            namespace[key] = _check(key, value, namespace, known, f"--{key}")
            print(f"Overriding: {key} = {namespace[key]!r}")
    return {k: namespace[k] for k in known}
