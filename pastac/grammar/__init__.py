"""Pasta-Lang front end: grammar, parser, diagnostics, printer, renderer, streaming scanner."""

from pastac.grammar.ast import Async, Document, Node, Position, Promise, Span, Sync, Text, dump
from pastac.grammar.diagnostics import CODES, Diagnostic, Note, ParseError, Severity
from pastac.grammar.parser import DEFAULT_MAX_DEPTH, MODES, Mode, ParseResult, check, parse, tokenize
from pastac.grammar.printer import to_source
from pastac.grammar.render import render
from pastac.grammar.scanner import Scanner
from pastac.grammar.structure import Binding, bind
from pastac.grammar.tags import AsyncClose, AsyncOpen, Lexeme, TagKind, TagToken, TextToken

__all__ = [
    "CODES",
    "DEFAULT_MAX_DEPTH",
    "MODES",
    "Async",
    "AsyncClose",
    "AsyncOpen",
    "Binding",
    "Diagnostic",
    "Document",
    "Lexeme",
    "Mode",
    "Node",
    "Note",
    "ParseError",
    "ParseResult",
    "Position",
    "Promise",
    "Scanner",
    "Severity",
    "Span",
    "Sync",
    "TagKind",
    "TagToken",
    "Text",
    "TextToken",
    "bind",
    "check",
    "dump",
    "parse",
    "render",
    "to_source",
    "tokenize",
]
