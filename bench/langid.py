"""How the two language detectors differ: accuracy, agreement and speed on alt-text-like captions.

    python bench/langid.py [--quick]

The sample is small and hand-written for this benchmark (no web data on this machine): short
alt-text-style captions with their language, in English, German, French, Spanish, Italian,
Portuguese, Dutch, Russian, Japanese and Chinese, from one word to a sentence, including product
names and all-caps texts. Prints per detector: accuracy on the whole sample and on texts of at most
three words, accuracy on English vs non-English (what `--langs en` depends on), agreement between
the two detectors, and texts/s per core (process CPU time).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from wit_builder.langid import make_detector  # noqa: E402

SAMPLE = {
    "en": ["A golden retriever puppy playing in the snow", "Red brick house with a white door",
           "sunset over the ocean", "Chocolate chip cookies on a baking tray", "Logo", "Mountain bike",
           "Portrait of a young woman smiling at the camera", "Fresh vegetables at the farmers market",
           "Click here to download the brochure", "Wedding cake with pink roses", "NEW YORK CITY SKYLINE AT NIGHT",
           "Men's leather wallet, brown", "Aerial view of the harbour", "kitchen", "Two cats sleeping on a sofa",
           "Vintage car parked on the street"],
    "de": ["Ein Hund spielt im Garten mit einem Ball", "Rotes Backsteinhaus mit weißer Tür",
           "Sonnenuntergang über dem Meer", "Frisches Brot vom Bäcker", "Blick auf die Altstadt von Heidelberg",
           "Damen Lederjacke schwarz", "Unser Team bei der Arbeit", "Hochzeitstorte mit rosa Rosen",
           "Kinder spielen auf dem Spielplatz", "Wanderweg im Schwarzwald", "Küche", "Zwei Katzen schlafen auf dem Sofa",
           "Gebrauchtwagen kaufen", "Herbstlaub im Park"],
    "fr": ["Un chien qui joue dans le jardin avec une balle", "Maison en briques rouges avec une porte blanche",
           "Coucher de soleil sur la mer", "Pain frais de la boulangerie", "Vue sur la vieille ville de Lyon",
           "Veste en cuir pour femme, noire", "Notre équipe au travail", "Gâteau de mariage aux roses",
           "Les enfants jouent dans le parc", "Cuisine", "Deux chats dorment sur le canapé",
           "Télécharger la brochure", "Vue aérienne du port", "Feuilles d'automne dans le parc"],
    "es": ["Un perro jugando en el jardín con una pelota", "Casa de ladrillo rojo con puerta blanca",
           "Puesta de sol sobre el mar", "Pan fresco de la panadería", "Vista del casco antiguo de Sevilla",
           "Chaqueta de cuero para mujer, negra", "Nuestro equipo trabajando", "Tarta de boda con rosas rosadas",
           "Niños jugando en el parque", "Cocina", "Dos gatos durmiendo en el sofá", "Descargar el folleto",
           "Vista aérea del puerto"],
    "it": ["Un cane che gioca in giardino con una palla", "Casa di mattoni rossi con porta bianca",
           "Tramonto sul mare", "Pane fresco dal fornaio", "Veduta del centro storico di Firenze",
           "Giacca di pelle da donna, nera", "Il nostro team al lavoro", "Torta nuziale con rose rosa",
           "Bambini che giocano nel parco", "Cucina", "Due gatti che dormono sul divano", "Vista aerea del porto"],
    "pt": ["Um cachorro brincando no jardim com uma bola", "Casa de tijolos vermelhos com porta branca",
           "Pôr do sol sobre o mar", "Pão fresco da padaria", "Vista do centro histórico de Lisboa",
           "Jaqueta de couro feminina, preta", "Nossa equipe trabalhando", "Bolo de casamento com rosas",
           "Crianças brincando no parque", "Cozinha", "Dois gatos dormindo no sofá", "Vista aérea do porto"],
    "nl": ["Een hond speelt in de tuin met een bal", "Rood bakstenen huis met een witte deur",
           "Zonsondergang boven de zee", "Vers brood van de bakker", "Uitzicht over de oude binnenstad van Utrecht",
           "Leren damesjas, zwart", "Ons team aan het werk", "Bruidstaart met roze rozen",
           "Kinderen spelen in het park", "Keuken", "Twee katten slapen op de bank", "Luchtfoto van de haven"],
    "ru": ["Собака играет в саду с мячом", "Красный кирпичный дом с белой дверью", "Закат над морем",
           "Свежий хлеб из пекарни", "Вид на старый город", "Кухня", "Две кошки спят на диване",
           "Наша команда за работой"],
    "ja": ["庭でボールで遊ぶ犬", "白いドアのある赤レンガの家", "海に沈む夕日", "パン屋の焼きたてパン",
           "キッチン", "ソファで寝ている二匹の猫", "東京タワーの夜景"],
    "zh": ["一只狗在花园里玩球", "白色门的红砖房子", "海上日落", "面包店的新鲜面包", "厨房",
           "两只猫在沙发上睡觉", "我们的团队在工作"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="passes over the sample when timing")
    ap.add_argument("--quick", action="store_true", help="time 3 passes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.quick:
        a.repeat = 3
    texts = [t for lang in SAMPLE for t in SAMPLE[lang]]
    gold = [lang for lang in SAMPLE for _ in SAMPLE[lang]]
    short = [len(t.split()) <= 3 for t in texts]
    print(f"sample: {len(texts)} captions in {len(SAMPLE)} languages ({sum(short)} of at most three words)")
    results = {}
    for spec in ("fasttext", "langdetect"):
        det = make_detector(spec, a.seed)
        codes, probs = det.detect(texts)
        c0 = time.process_time()
        for _ in range(a.repeat):
            det.__dict__.pop("_cache", None)      # time the model, not the repeated-text cache
            det.detect(texts)
        rate = a.repeat * len(texts) / (time.process_time() - c0)
        ok = [c == g for c, g in zip(codes, gold)]
        en_ok = [(c == "en") == (g == "en") for c, g in zip(codes, gold)]
        results[spec] = codes
        wrong = [(t, g, c) for t, g, c in zip(texts, gold, codes) if c != g]
        print(f"\n{spec}: accuracy {sum(ok) / len(ok):.1%} (short texts {sum(o for o, s in zip(ok, short) if s) / sum(short):.1%}, "
              f"longer {sum(o for o, s in zip(ok, short) if not s) / (len(ok) - sum(short)):.1%}); "
              f"English vs not: {sum(en_ok) / len(en_ok):.1%}; {rate:,.0f} texts/s per core")
        for t, g, c in wrong:
            print(f"    {g} -> {c:4s} {t}")
    agree = sum(x == y for x, y in zip(results["fasttext"], results["langdetect"]))
    print(f"\nagreement between the detectors: {agree}/{len(texts)} ({agree / len(texts):.1%})")


if __name__ == "__main__":
    main()
