"""prompt_decorator: add system text and fixed messages to every chat request of a model.

plugins:
  - use: prompt_decorator
    system: "Answer briefly."      # merged into the first system message, or added as one
    position: prepend              # prepend | append, relative to an existing system message
    prepend_messages: []           # extra messages placed before the conversation
    append_messages: []            # and after it
"""

from plugins.prompt_decorator.plugin import PromptDecorator, PromptDecoratorConfig, decorate

PLUGIN = PromptDecorator

__all__ = ["PLUGIN", "PromptDecorator", "PromptDecoratorConfig", "decorate"]
