
$5f4e3d2c-1b0a-4f9e-8d7c-6b5a49382716ðóÞ©ÀÞœøcody.chatResponse"hasCode*,

5.2.3!
JETBRAINS_CODY_EXTENSION4.2.02!
	charCount€
	lineCount:R7
 4bf92f3577b34da6a3ce929d0e0e4736interaction-1
NL