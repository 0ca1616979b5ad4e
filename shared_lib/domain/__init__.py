"""Pure domain: values, commands, errors and the rules that plan stock changes. No I/O."""
