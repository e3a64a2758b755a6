"""Acceptance 1+2: k2's encoder against pip's tiktoken with Kimi's pattern and o200k ranks, on the fixture
corpus and on >= 10,000 seeded random strings from many scripts, whitespace and digits (one k2 process)."""
import json
import random

from k2_tok import FIXTURES, kimi_tiktoken, run_lines

MODEL = FIXTURES / "tokenizer" / "kimi-o200k"

# Code point pools: scripts, marks, digits, whitespace (incl. Unicode spaces tiktoken's \s knows), emoji.
POOLS = {
    "latin": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "latin_ext": "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿßĀāĂăĄąĆćČčĎďĘęĚěĞğİıŁłŃńŇňŐőŒœŘřŚśŞşŠšŢţŤťŮůŰűŸŹźŻżŽžſǅǈǋǲ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي٠١٢٣٤٥٦٧٨٩ًٌٍَُِّ",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह्ािीुूेैोौंः०१२३",
    "thai": "กขคงจฉชซญดตถทนบปผพฟภมยรลวศษสหอฮะัาำิีึืุู็่้๊๋์๐๑๒",
    "han": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴切",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんがぎぐげござじずぜぞアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンー々〆ヵヶ",
    "hangul": "가나다라마바사아자차카타파하각난닫랄맘밥삿앙잦찿캌탙팦핳한국어텍스트입니다",
    "marks": "\u0300\u0301\u0302\u0303\u0308\u030a\u0327\u0328\u064b\u0650\u093f\u0e31\u20dd\u302a\u3099",
    "digits": "0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९０１２３４５６７８９²³¹½⅓ⅣⅫ",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»“”‘’„…–—·•、。，！？：；（）【】《》「」『』・￥€£¥©®™°±×÷§¶",
    "space": " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\x85\u180e\u200b\u200c\u200d\ufeff",
    "emoji": "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘👍👎👋🏻🏼🏽🏾🏿❤️🔥✨🎉🚀🌍🇨🇳🇺🇸👨‍👩‍👧‍👦🧑‍💻©️",
    "contractions": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'ſ", "’s"],
    "special": ["<|im_end|>", "<|im_user|>", "<|tool_call_begin|>", "[BOS]", "[EOS]", "<|reserved_token_200003|>"],
    "rare": [chr(c) for c in (0x1F, 0x7F, 0x80, 0xAD, 0x34F, 0x1D400, 0x1D7D8, 0x10330, 0x20000, 0x2A6D6, 0xE000, 0xF8FF,
                              0xFFFD, 0x1F9D1, 0x0378, 0x2E80, 0x3007, 0x3005, 0x16A0, 0x1200, 0x0F40, 0x13A0)],
}


def random_string(rng: random.Random) -> str:
    n_runs = rng.randint(1, 12)
    weights = {"latin": 6, "space": 5, "digits": 4, "punct": 4, "han": 3, "contractions": 2, "emoji": 2, "special": 1}
    names = list(POOLS)
    parts = []
    for _ in range(n_runs):
        pool = POOLS[rng.choices(names, weights=[weights.get(k, 1.5) for k in names])[0]]
        run_len = rng.choice((1, 1, 2, 3, 5, 8, 20)) if not isinstance(pool, list) else 1
        parts.append("".join(rng.choice(pool) for _ in range(run_len)))
    return "".join(parts)


def test_fixture_corpus_matches_tiktoken_and_fixture():
    enc = kimi_tiktoken(MODEL)
    rows = json.loads((FIXTURES / "tokenizer" / "kimi_pat_o200k.visible.json").read_text())["rows"]
    texts = [r["text"] for r in rows]
    got = run_lines(["tokenize", str(MODEL)], texts)
    for row, ids in zip(rows, got):
        assert ids == row["ids"] == enc.encode(row["text"], allowed_special="all"), repr(row["text"])


def test_10k_random_strings_match_tiktoken():
    enc = kimi_tiktoken(MODEL)
    rng = random.Random(20261129)
    texts = [random_string(rng) for _ in range(10_000)]
    # A few long mixed documents too: whitespace runs, code, multi-script paragraphs.
    texts += ["".join(random_string(rng) for _ in range(200)) for _ in range(20)]
    texts += [" " * 3000 + "x", "\n" * 500, "\t \n" * 300, "1" * 1000]
    got_special = run_lines(["tokenize", str(MODEL)], texts)
    got_plain = run_lines(["tokenize", str(MODEL), "--no-special"], texts)
    mismatches = []
    for text, ids_s, ids_p in zip(texts, got_special, got_plain):
        if ids_s != enc.encode(text, allowed_special="all"):
            mismatches.append(("special", text))
        if ids_p != enc.encode_ordinary(text):
            mismatches.append(("plain", text))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"
    # decode(encode(s)) == s through `k2 detokenize`.
    decoded = run_lines(["detokenize", str(MODEL)], got_special[:2000])
    assert decoded == texts[:2000]
