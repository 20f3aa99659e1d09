"""The speculative decoding core: sampling transforms, ragged verification and theory (pure functions).

Submodules are imported explicitly (`edgespec.spec.theory` needs only scipy; `sampling` and
`verify` need torch), so importing this package stays cheap.
"""
