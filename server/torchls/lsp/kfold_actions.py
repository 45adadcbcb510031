"""k-fold cross-validation code actions: listed cheaply (a title and a kind), their edit made
on `codeAction/resolve`; for clients that cannot resolve, made at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lsprotocol import types

from torchls.kfold.actions import TITLES, available, can_wrap, insertion, wrap
from torchls.lsp.load_checks import kind_wanted

if TYPE_CHECKING:
    from torchls.lsp.server import TorchLanguageServer

# Inserting is offered anywhere in a torch file: a source action (the editor's Source Action
# menu), not a refactoring that would put a light bulb on every line. Wrapping is offered only
# where there is a loop to wrap, as a refactoring.
INSERT_KIND = types.CodeActionKind.Source
WRAP_KIND = types.CodeActionKind.RefactorRewrite
DATA_TAG = "torchls.kfold"
# Documents up to this size are parsed for a code action request if their analysis is not
# current (about 30 ms here); larger ones wait for the debounced check.
PARSE_ON_REQUEST_CHARS = 32 * 1024


class KFoldActions:
    def __init__(self, server: TorchLanguageServer) -> None:
        self.server = server

    def _resolves(self) -> bool:
        capabilities = self.server.client_capabilities
        text = capabilities.text_document if capabilities else None
        code_action = text.code_action if text else None
        support = code_action.resolve_support if code_action else None
        return support is not None and "edit" in support.properties

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        wants_insert = kind_wanted(INSERT_KIND, params.context.only)
        wants_wrap = kind_wanted(WRAP_KIND, params.context.only)
        if not (wants_insert or wants_wrap):
            return []
        uri = params.text_document.uri
        document = self.server.workspace.get_text_document(uri)
        model_cost = self.server.model_cost
        models = model_cost.current(uri)
        asked = params.context.trigger_kind == types.CodeActionTriggerKind.Invoked
        if models is None and (asked or len(document.source) <= PARSE_ON_REQUEST_CHARS):
            models = model_cost.models(uri)  # the user asked (a menu), or it is quick
        if models is None:
            # A large file just edited: its analysis comes with the debounced check (the
            # editor asks again when the diagnostics change); parsing it here would hold up
            # this and every other request for a second or more.
            return []
        if not available(models):
            return []
        line = params.range.start.line
        end = params.range.end.line
        if params.range.end.character == 0 and end > line:
            end -= 1  # a selection of whole lines ends at the start of the next one
        actions = []
        offers = list(TITLES.items()) if wants_insert else []
        if wants_wrap and can_wrap(models, line, end):
            offers.insert(0, ("wrap", "Wrap in k-fold cross-validation"))
        for kind, title in offers:
            data = {"tag": DATA_TAG, "uri": uri, "version": document.version, "kind": kind}
            data["line"] = line
            data["end"] = end
            action_kind = WRAP_KIND if kind == "wrap" else INSERT_KIND
            action = types.CodeAction(title=f"torchls: {title}", kind=action_kind, data=data)
            if not self._resolves():
                action = self.resolve(action)
                if action.edit is None:
                    continue
            actions.append(action)
        return actions

    def owns(self, action: types.CodeAction) -> bool:
        return isinstance(action.data, dict) and action.data.get("tag") == DATA_TAG

    def resolve(self, action: types.CodeAction) -> types.CodeAction:
        data: dict[str, Any] = action.data if isinstance(action.data, dict) else {}
        uri = str(data.get("uri", ""))
        models = self.server.model_cost.models(uri) if uri else None
        document = self.server.workspace.get_text_document(uri) if uri else None
        if models is None or document is None or document.version != data.get("version"):
            action.disabled = types.CodeActionDisabled(
                reason="the file changed since the action was offered; ask again"
            )
            return action
        line = int(data.get("line", 0))
        if data.get("kind") == "wrap":
            made = wrap(models, line, int(data.get("end", line)))
        else:
            made = insertion(models, str(data.get("kind")), line)
        if made is None:
            action.disabled = types.CodeActionDisabled(
                reason="the loop would not fit here as valid Python"
            )
            return action
        edits = [
            types.TextEdit(
                range=types.Range(
                    start=types.Position(line=e.span.start_line, character=e.span.start_char),
                    end=types.Position(line=e.span.end_line, character=e.span.end_char),
                ),
                new_text=e.text,
            )
            for e in made.edits
        ]
        action.edit = types.WorkspaceEdit(
            document_changes=[
                types.TextDocumentEdit(
                    text_document=types.OptionalVersionedTextDocumentIdentifier(
                        uri=uri, version=document.version
                    ),
                    edits=edits,
                )
            ]
        )
        return action
