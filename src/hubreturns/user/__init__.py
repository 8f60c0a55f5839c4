"""The Service User's side: signing and sending requests, reading the DCC's answers,
bulk submission, the demo world's scenarios and the conformance test pack."""
